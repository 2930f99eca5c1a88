"""File and image I/O below the datasets: atomic files and staged output folders
(`files`), pictures and grids (`images`), raw images in and masks out (`image_io`).
"""
