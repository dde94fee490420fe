"""face_pipelines: synthetic face-recognition training sets the Vec2Face way."""

__version__ = "0.1.0"
