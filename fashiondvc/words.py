"""Search by words: what an editor types -> attribute filters.

``"red and white stripes, no scarf"`` -> include ``red``, ``white``, ``pattern_stripe``;
exclude ``scarf``. Each attribute answers to its own name and to common words for it
(`SYNONYMS`: "striped" and "stripes" for ``pattern_stripe``, "plaid", "tartan" and "checked"
for ``pattern_plaid``, "grey" for ``gray``...). A negation ("no", "not", "without", "non")
applies to every attribute after it up to the next comma, semicolon, "but" or "with". Words
that name no attribute but are common in such queries (garments, articles: `IGNORED`) are
skipped; any other word is an error naming the words this index knows.

Kept free of heavy imports: it runs before the network loads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fashiondvc.errors import FashionError

#: Attribute -> words and phrases (lower case) that ask for it, besides its own name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "necktie": ("tie", "ties", "neckties", "neck tie", "necktie"),
    "collar": ("collars", "collared"),
    "placket": ("plackets", "button front", "buttoned"),
    "scarf": ("scarves", "scarfs"),
    "skin_exposure": ("skin", "bare skin", "skin exposure", "revealing"),
    "pattern_solid": ("solid", "plain", "solid colour", "solid color", "single colour",
                      "single color", "unpatterned"),
    "pattern_floral": ("floral", "florals", "flower", "flowers", "flowery", "flowered"),
    "pattern_spot": ("spot", "spots", "spotted", "dot", "dots", "dotted", "polka dot",
                     "polka dots", "polka-dot"),
    "pattern_graphics": ("graphic", "graphics", "print", "printed", "logo", "logos"),
    "pattern_plaid": ("plaid", "plaids", "tartan", "check", "checks", "checked", "checkered",
                      "chequered", "gingham"),
    "pattern_stripe": ("stripe", "stripes", "striped", "stripy", "stripey", "pinstripe",
                       "pinstriped", "pinstripes"),
    "red": ("crimson", "scarlet", "maroon", "burgundy"),
    "yellow": ("gold", "golden", "mustard"),
    "green": ("olive", "lime", "emerald"),
    "cyan": ("turquoise", "teal", "aqua"),
    "blue": ("navy", "azure", "cobalt"),
    "purple": ("violet", "lilac", "lavender", "magenta", "mauve"),
    "brown": ("tan", "beige", "khaki", "camel", "chocolate"),
    "white": ("cream", "ivory", "off-white"),
    "gray": ("grey", "silver", "charcoal"),
    "black": ("jet black",),
    "many_colors": ("many colors", "many colours", "multicolor", "multicolour",
                    "multicolored", "multicoloured", "multi-coloured", "multi-colored",
                    "colorful", "colourful", "rainbow"),
}
#: Words that start a negation, and words that end one.
NEGATIONS = ("no", "not", "without", "non", "never", "minus")
SCOPE_ENDS = ("but", "with", "plus")
#: Words skipped without a match: connectives, articles, and garments the model does not
#: predict (a query names the attributes of any garment).
IGNORED = frozenset((
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "some", "any", "very",
    "light", "dark", "bright", "pale", "wearing", "wears", "worn", "dressed", "person", "people",
    "man", "men", "woman", "women", "girl", "boy", "someone", "shirt", "shirts", "blouse", "top",
    "tops", "tee", "t-shirt", "tshirt", "dress", "dresses", "skirt", "jacket", "jackets", "coat",
    "coats", "sweater", "sweaters", "jumper", "cardigan", "suit", "suits", "blazer", "vest",
    "hoodie", "outfit", "clothes", "clothing", "garment", "pattern", "patterned", "colour",
    "color", "coloured", "colored", "pants", "trousers", "jeans",
))


@dataclass(frozen=True)
class TextQuery:
    """Attributes a text asks for (``include``) and against (``exclude``), in text order."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)


def vocabulary(labels: Sequence[str]) -> dict[str, str]:
    """Word or phrase -> attribute, for the attributes ``labels`` of one model."""
    words = {}
    for name in labels:
        words[name.lower()] = name
        words[name.lower().replace("_", " ")] = name
        for word in SYNONYMS.get(name, ()):
            words[word] = name
    return words


def parse_text(text: str, labels: Sequence[str]) -> TextQuery:
    """The attribute filters ``text`` asks for, among ``labels`` (a model's attributes).

    Raises
    ------
    FashionError
        One line naming the first word that is neither an attribute, a synonym of one
        (`SYNONYMS`), a negation nor an ignored word, and listing the words this model knows;
        or if the text names no attribute, or asks for and against the same one.
    """
    words = vocabulary(labels)
    longest = max(len(phrase.split()) for phrase in words)
    include: dict[str, None] = {}
    exclude: dict[str, None] = {}
    for clause in re.split(r"[,;.]+", text.lower()):
        tokens = re.findall(r"[a-z][a-z_'-]*", clause)
        negated, i = False, 0
        while i < len(tokens):
            token = tokens[i]
            if token in NEGATIONS:
                negated, i = True, i + 1
                continue
            if token in SCOPE_ENDS:
                negated, i = False, i + 1
                continue
            for size in range(min(longest, len(tokens) - i), 0, -1):
                phrase = " ".join(tokens[i:i + size])
                if phrase in words:
                    (exclude if negated else include)[words[phrase]] = None
                    i += size
                    break
            else:
                if token not in IGNORED:
                    known = sorted({w for w in words if " " not in w})
                    raise FashionError(f"--text: unknown word {token!r}; known words: "
                                       f"{', '.join(known)} (and 'no', 'not', 'without')")
                i += 1
    both = [name for name in include if name in exclude]
    if both:
        raise FashionError(f"--text: asks both for and against {both[0]!r}")
    query = TextQuery(tuple(include), tuple(exclude))
    if not query:
        raise FashionError(f"--text: {text!r} names no attribute; try e.g. 'red stripes, "
                           "no scarf'")
    return query
