"""SceneQA's fixed vocabulary: object names, outfit themes (they create the co-occurrence statistics
POPE's popular / adversarial negatives are drawn from), colours, words for signs, question families
and the instructions appended to questions (LLaVA's wording)."""

from __future__ import annotations

CANVAS = 224

# Fashion-MNIST label -> short name (single words so that answers stay short)
ITEMS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
ITEM_PHRASE = {n: n for n in ITEMS} | {"trousers": "pair of trousers"}          # after "a" / "one"
ITEM_PLURAL = {"t-shirt": "t-shirts", "trousers": "pairs of trousers", "pullover": "pullovers", "dress": "dresses",
               "coat": "coats", "sandal": "sandals", "shirt": "shirts", "sneaker": "sneakers", "bag": "bags",
               "boot": "boots"}

# outfits: a scene draws most of its items from one theme, so items co-occur like objects in COCO
THEMES = {
    "casual": ("t-shirt", "trousers", "sneaker", "bag"),
    "office": ("shirt", "trousers", "coat", "boot"),
    "summer": ("dress", "sandal", "bag", "t-shirt"),
    "winter": ("coat", "pullover", "boot", "trousers"),
}
THEME_P = 0.75  # chance an item comes from the scene's theme (else any item)

# POPE "popular": items ordered by how often they occur (number of themes, then label order)
POPULARITY = tuple(sorted(ITEMS, key=lambda n: (-sum(n in t for t in THEMES.values()), ITEMS.index(n))))


def cooccurrence(a: str, b: str) -> int:
    """How many themes hold both items (POPE "adversarial": the absent item that co-occurs most)."""
    return sum(a in t and b in t for t in THEMES.values())


SHAPES = ("circle", "square", "triangle", "star", "diamond")
SHAPE_PLURAL = {s: s + "s" for s in SHAPES}
COLOURS = {
    "red": (220, 30, 35), "green": (35, 165, 50), "blue": (35, 80, 225), "yellow": (245, 215, 30),
    "orange": (245, 135, 20), "purple": (140, 55, 185), "white": (245, 245, 245), "black": (20, 20, 20),
}
COLOUR_NAMES = tuple(COLOURS)

# words on signs: short, common, none equal to another answer (colours, shapes, items, yes/no, ...)
WORDS = ("stop", "open", "exit", "taxi", "hotel", "bank", "cafe", "park", "sale", "bus", "pizza", "book",
         "milk", "tea", "rain", "sun", "moon", "fish", "tree", "lamp", "door", "shop", "gym", "zoo", "farm",
         "gold", "jazz", "rock", "bike", "boat", "car", "train", "home", "love", "cold", "hot", "fast", "slow",
         "west", "east", "north", "south", "push", "pull", "free", "food", "wine", "bread", "cake", "salt",
         "king", "city", "road", "lake", "snow", "wind", "music", "ice", "art", "news")
SIGN_STYLES = (((250, 250, 245), (15, 15, 15)), ((250, 220, 60), (15, 15, 15)), ((25, 60, 150), (250, 250, 250)),
               ((30, 110, 50), (250, 250, 250)))  # (board, ink)

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
COUNT_RANGE = (1, 4)

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
YES_NO = "Please answer yes or no."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."

# family -> the benchmark whose skill and metric it mirrors
FAMILIES = {
    "existence": {"benchmark": "POPE", "metric": "pope (accuracy, precision, recall, F1, yes-ratio per negative split)",
                  "headline": "accuracy"},
    "counting": {"benchmark": "VQAv2 'how many'", "metric": "VQA accuracy", "headline": "accuracy"},
    "attribute": {"benchmark": "GQA (attribute)", "metric": "exact match", "headline": "accuracy"},
    "spatial": {"benchmark": "GQA (relation)", "metric": "exact match", "headline": "accuracy"},
    "ocr": {"benchmark": "TextVQA", "metric": "VQA accuracy", "headline": "accuracy"},
    "multiple_choice": {"benchmark": "MMBench / ScienceQA-IMG", "metric": "option accuracy and CircularEval",
                        "headline": "accuracy"},
    "mme": {"benchmark": "MME", "metric": "acc + acc+ per category, summed", "headline": "total"},
    "unanswerable": {"benchmark": "VizWiz", "metric": "VQA accuracy ('unanswerable' is an answer)",
                     "headline": "accuracy"},
}
FAMILY_NAMES = tuple(FAMILIES)
MME_CATEGORIES = ("existence", "count", "position", "color", "OCR")
MC_KINDS = ("item", "color", "where", "word")

CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "Write a short caption for this image.",
    "What is shown in this picture? Answer in one sentence.",
    "List the objects in the image and the background they are on.",
)
