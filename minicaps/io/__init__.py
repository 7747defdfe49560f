"""Files: checkpoints (checkpoint.py) read through an allow-list of archive members and
bounded sizes (archive.py), their metadata checked field by field (metadata.py), written
by one writer that never follows a link (writer.py); weights files and the shipped
network (weights.py); and what may be opened as a data file or written as an output
(files.py)."""
