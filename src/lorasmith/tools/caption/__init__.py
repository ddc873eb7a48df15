"""Captioning backends, one file each (wd14, blip, basic), sharing common.py's folder walk and writers."""
