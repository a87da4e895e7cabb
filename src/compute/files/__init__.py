"""The file plane: a job's files between the server and workers that do not share its disk."""
