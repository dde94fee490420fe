"""faceworld."""
