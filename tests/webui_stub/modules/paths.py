"""Where the webui keeps models; tests point it at a temporary folder."""

models_path = ""
