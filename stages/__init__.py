"""The pipeline's stages, one script per ``dvc.yaml`` stage.

Each reads its params, calls the package and writes its outputs.
"""
