"""lorasmith: train character LoRAs for Stable Diffusion.

The library is `lorasmith.api`; the command line (`lorasmith.cli`) and the web GUI
(`lorasmith.gui`) are thin shells over it. Nothing heavy is imported here so that
`lorasmith --help` stays instant.
"""

__version__ = "0.1.0"
