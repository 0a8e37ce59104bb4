"""EuroSAT land-cover classification: data, checkpoints, inference and the Gradio demo.

Importing the package stays cheap: no model, file or network is touched until a function is called.
"""

__version__ = "0.1.0"
