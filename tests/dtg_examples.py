"""Model input shared by the backend and tiny-model tests: the model card's example."""

PROMPT = (
    "quality: masterpiece\n"
    "rating: safe\n"
    "artist: <|empty|>\n"
    "characters: <|empty|>\n"
    "copyrights: <|empty|>\n"
    "aspect ratio: 1.0\n"
    "target: <|short|>\n"
    "general: 1girl, solo, dragon girl, dragon horns, dragon tail<|input_end|>"
)
