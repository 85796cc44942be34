"""Where raw data comes from: the MSD and nnU-Net folder formats, NIfTI headers, the download, synthetic phantoms."""
