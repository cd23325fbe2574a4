"""Stand-in for ComfyUI's folder_paths: the model folder registry custom nodes use.

Written from ComfyUI's contract: `folder_names_and_paths` maps a folder name to
(paths, extensions); `add_model_folder_path` creates a name with no extension filter or
appends a path (extra_model_paths.yaml goes through it before custom nodes load).
"""

import os

base_path = os.path.dirname(os.path.abspath(__file__))
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}


def reset(new_models_dir: str) -> None:
    global models_dir
    models_dir = new_models_dir
    folder_names_and_paths.clear()


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False):
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([], set())
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        return
    if is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]
