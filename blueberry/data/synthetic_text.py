"""The embedded offline corpus: short stories built from templates, word lists and arithmetic.

Designed to pull two ways at once. A tiny model must learn it fast: a few sentence templates,
characters, places and objects chosen once per document and reused, pronouns that agree,
correct sums and counting. Yet almost no 32-token span of one document may recur in another, or
validation would measure memorisation: every sentence carries slots filled from lists of
dozens to hundreds of words, and sentences come in a random order.

Document i depends only on (seed, i), so the first k of n documents equal generate_documents(k).
Pure Python and fast (thousands of documents per second).
"""

from __future__ import annotations

import random

# Part of the token cache key: bump it whenever the generator's output changes.
VERSION = 4

GIRLS = """Mia Emma Lily Ava Zoe Ella Ruby Chloe Grace Anna Sara Nora Lucy Alice Clara Hannah
Maya Leah Julia Rosa Ivy Nina Eva Lena Maria Olivia Sophie Amelia Isla Freya Daisy Poppy Hazel
Luna Stella Violet Iris Jade Molly Holly Kate Amy Beth Lara Tara Kira Nadia Elsa Greta Hilda
Ingrid Astrid Wendy Fiona Gemma Heidi Joy Katie Lola Megan Naomi Paula Rita Tessa Una Vera
Yara Zara Alma Bella Carla Dora Edith Flora Gina Helen Irene June Kelly Linda Mabel Nell Opal
Pearl Queenie Rosie Sally Tina Ursula Willa Xena Yvonne Zelda Esme Mila Aria Cora""".split()
BOYS = """Leo Max Sam Tom Ben Jack Noah Liam Owen Finn Hugo Oscar Theo Adam Luke Eli Jonah
Felix Henry Louis Arthur Harry Oliver Ethan Lucas Mason Caleb Ryan Dylan Aaron Isaac Simon Peter
Paul Mark Joel Dean Rex Otto Ivan Igor Boris Carl Dennis Edgar Frank George Hector Ian Jasper
Kevin Lars Milo Nathan Omar Pablo Quentin Rafael Stefan Tobias Umar Victor Walter Xavier Yusuf
Zack Alfie Bruno Cedric Derek Emil Fred Gus Hank Ira Jude Kurt Lewis Marco Ned Olaf Perry Roy
Seth Ted Vince Wes Abel Basil Cyril Dario Elmer Flynn Gideon Hamish Arlo Rory Tariq""".split()
TOWN_HEAD = """Oak Ash Elm Pine Willow Birch Maple Cedar Stone Brook River Lake Hill Green Red
White Black Silver Gold Fox Wolf Bear Deer Hawk Crow Swan Mill Bridge Salt Sun Moon Star Frost
Rain Wind Apple Berry Honey Clover Rose Thorn""".split()
TOWN_TAIL = "ford field wood vale ton bury dale wick stead mere ridge haven brook port".split()

ANIMALS = [("cat", "cats"), ("dog", "dogs"), ("rabbit", "rabbits"), ("duck", "ducks"),
           ("goat", "goats"), ("horse", "horses"), ("pig", "pigs"), ("cow", "cows"),
           ("sheep", "sheep"), ("hen", "hens"), ("frog", "frogs"), ("owl", "owls"),
           ("fox", "foxes"), ("mouse", "mice"), ("bird", "birds"), ("fish", "fish"),
           ("turtle", "turtles"), ("pony", "ponies"), ("puppy", "puppies"), ("kitten", "kittens"),
           ("lamb", "lambs"), ("goose", "geese"), ("parrot", "parrots"), ("hamster", "hamsters"),
           ("squirrel", "squirrels"), ("deer", "deer"), ("bee", "bees"), ("snail", "snails"),
           ("crab", "crabs"), ("bear", "bears"), ("swan", "swans"), ("robin", "robins")]
PET_NAMES = """Biscuit Pepper Muffin Buttons Coco Ziggy Patch Sunny Bubbles Noodle Pickle
Marble Waffle Cookie Ginger Shadow Whiskers Pebble Toffee Rusty Socks Peanut Mango Olive Bean
Fudge Sprout Acorn Cinder Dot Jelly Fluff Maple Nugget Pippin Snowy Tiger Lucky Bingo Dusty
Comet Button Clover Hazel Juniper Kiwi Lemon Mochi Nacho Oreo Pumpkin Rocket Tofu Truffle""".split()
THINGS = [("apple", "apples"), ("pear", "pears"), ("orange", "oranges"), ("plum", "plums"),
          ("cherry", "cherries"), ("lemon", "lemons"), ("peach", "peaches"), ("carrot", "carrots"),
          ("egg", "eggs"), ("cookie", "cookies"), ("cake", "cakes"), ("muffin", "muffins"),
          ("candy", "candies"), ("nut", "nuts"), ("berry", "berries"), ("grape", "grapes"),
          ("ball", "balls"), ("book", "books"), ("pencil", "pencils"), ("crayon", "crayons"),
          ("marble", "marbles"), ("shell", "shells"), ("stone", "stones"), ("coin", "coins"),
          ("button", "buttons"), ("sticker", "stickers"), ("card", "cards"), ("block", "blocks"),
          ("flower", "flowers"), ("leaf", "leaves"), ("feather", "feathers"), ("ribbon", "ribbons"),
          ("balloon", "balloons"), ("kite", "kites"), ("toy", "toys"), ("cup", "cups"),
          ("spoon", "spoons"), ("hat", "hats"), ("sock", "socks"), ("key", "keys"),
          ("bell", "bells"), ("star", "stars"), ("box", "boxes"), ("brush", "brushes"),
          ("candle", "candles"), ("cap", "caps"), ("drum", "drums"), ("rope", "ropes"),
          ("seed", "seeds"), ("bean", "beans"), ("potato", "potatoes"), ("tomato", "tomatoes"),
          ("bun", "buns"), ("pie", "pies"), ("lolly", "lollies"), ("paper boat", "paper boats"),
          ("toy car", "toy cars"), ("glass bead", "glass beads"), ("pine cone", "pine cones"),
          ("sea shell", "sea shells")]
CONTAINERS = """baskets bags boxes jars bowls buckets pockets sacks tins crates drawers cups pots
trays""".split()
COLORS = """red blue green yellow orange purple pink brown black white grey golden silver""".split()
ADJECTIVES = """big small tiny huge old new shiny soft warm cold quiet loud happy sleepy
busy funny brave gentle kind clever shy proud bright dark sunny windy rainy snowy muddy dusty
clean round heavy light smooth rough sweet sour fresh lovely strange tall short long wide
narrow friendly noisy calm wild tidy messy fluffy sticky wet dry cozy silly careful curious
lucky lonely cheerful grumpy patient speedy""".split()
PLACES = """park garden forest river beach farm market school library bakery kitchen meadow
hill lake pond field barn harbor station playground village square orchard zoo museum shop
cave bridge street yard attic cellar island valley castle tower stable shore woods""".split()
FURNITURE = """bed table chair sofa bench stairs rug door window shelf desk tree bush hedge
fence wall porch step box basket""".split()
MOTION = """walked ran hurried skipped wandered raced rode cycled marched strolled hopped
jogged climbed sailed""".split()
FEELINGS = """happy sad glad proud worried surprised excited tired angry scared calm pleased
upset curious nervous cheerful grateful bored lonely hopeful""".split()
ACTIVITIES = ["read a book", "played a game", "built a tower", "drew a picture",
              "baked bread", "sang a song", "planted seeds", "fed the birds", "washed the dishes",
              "made a kite", "wrote a letter", "painted a fence", "flew a kite", "told a story",
              "cleaned the room", "picked berries", "made soup", "fixed a chair", "played chess",
              "looked at the stars", "watched the rain", "built a sandcastle", "made a hat",
              "folded paper birds"]
ADVERBS = """slowly quickly quietly happily carefully softly loudly gladly proudly bravely
gently calmly sleepily eagerly""".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
TIMES = "morning afternoon evening night".split()
WEATHER = """sunny rainy windy cloudy snowy foggy warm cold stormy bright""".split()
RELATIVES = """grandma grandpa mother father aunt uncle sister brother teacher neighbor cousin
friend""".split()
SAYINGS = ["Look at that", "What a day", "Come here", "Wait for me", "Be careful",
           "I can help", "Let us go", "Thank you", "That is funny", "I found it", "Follow me",
           "Not again", "Oh no", "Well done", "Try again", "Over here", "Hold on", "Good job"]
ASKED = "asked wondered whispered called shouted".split()
COUNT_WORDS = "one two three four five".split()


class _Person:
    def __init__(self, name: str, girl: bool):
        self.name = name
        self.he, self.his = ("she", "her") if girl else ("he", "his")


class _Story:
    """One document's cast and props, chosen once and reused in every sentence."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        girls, boys = rng.sample(GIRLS, 2), rng.sample(BOYS, 2)
        people = [_Person(n, True) for n in girls] + [_Person(n, False) for n in boys]
        rng.shuffle(people)
        self.hero, self.friend = people[0], people[1]
        self.town = rng.choice(TOWN_HEAD) + rng.choice(TOWN_TAIL)
        self.pet_kind = rng.choice(ANIMALS)
        self.pet = rng.choice(PET_NAMES)
        self.relative = rng.choice(RELATIVES)
        self.places = rng.sample(PLACES, 3)
        self.things = rng.sample(THINGS, 3)
        self.treasure = (rng.choice(COLORS), rng.choice(THINGS)[0])

    def pick(self, seq):
        return self.rng.choice(seq)

    def someone(self) -> _Person:
        return self.pick((self.hero, self.friend))


# Each sentence maker draws its slots from the story's cast (recurring) and from the word lists
# (fresh), so that a sentence is predictable in shape but rarely repeated verbatim elsewhere.

def _add(s: _Story) -> str:
    p, (_, things) = s.someone(), s.pick(s.things)
    a, b = s.rng.randint(2, 20), s.rng.randint(1, 12)
    verb = s.pick(("found", "got", "picked up", "was given", "bought"))
    return f"{p.name} had {a} {things} and {verb} {b} more, so {p.he} had {a + b} {things}."


def _sub(s: _Story) -> str:
    p = s.someone()
    q = s.friend if p is s.hero else s.hero
    _, things = s.pick(s.things)
    a = s.rng.randint(3, 25)
    b = s.rng.randint(1, a - 1)
    return f"{p.name} had {a} {things} and gave {b} to {q.name}, so {p.he} had {a - b} left."


def _mul(s: _Story) -> str:
    p, (_, things) = s.someone(), s.pick(s.things)
    a, b = s.rng.randint(2, 9), s.rng.randint(2, 6)
    box = s.pick(CONTAINERS)
    return (f"{p.name} put {a} {things} in each of {b} {box}, so there were {a * b} "
            f"{things} in all.")


def _compare(s: _Story) -> str:
    _, things = s.pick(s.things)
    a, b = s.rng.sample(range(2, 30), 2)
    h, f = s.hero, s.friend
    more = h if a > b else f
    return (f"{h.name} had {a} {things} and {f.name} had {b}, so {more.name} had "
            f"{abs(a - b)} more.")


def _count(s: _Story) -> str:
    p = s.someone()
    _, animals = s.pick(ANIMALS)
    # Counting is determined once it starts, and long fixed runs would recur verbatim across
    # documents: runs stay short (<= 5 items), counted words carry a colour, numbers vary their
    # start and step.
    if s.rng.random() < 0.4:
        k = s.rng.randint(3, 5)
        seq = ", ".join(f"{word} {s.pick(COLORS)}" for word in COUNT_WORDS[:k])
        return f"{p.name} counted the {animals} at the {s.pick(s.places)}: {seq}. There were {k}."
    start, step, k = s.rng.randint(1, 150), s.pick((1, 1, 2, 5, 10)), s.rng.randint(3, 5)
    seq = ", ".join(str(start + i * step) for i in range(k))
    by = "" if step == 1 else f" by {step}s"
    return f"{p.name} counted{by} from {start} to {start + (k - 1) * step}: {seq}."


def _walk(s: _Story) -> str:
    return (f"{s.hero.name} and {s.friend.name} {s.pick(MOTION)} to the {s.pick(s.places)} "
            f"with {s.pet}.")


def _describe(s: _Story) -> str:
    a, b = s.rng.sample(ADJECTIVES, 2)
    return f"The {s.pick(s.places)} was {a} and {b}, and the sky was {s.pick(COLORS)}."


def _say(s: _Story) -> str:
    p = s.someone()
    return f'"{s.pick(SAYINGS)}, {s.pick(ADJECTIVES)} {s.pick(ANIMALS)[0]}!" said {p.name}.'


def _feel(s: _Story) -> str:
    p = s.someone()
    thing, _ = s.pick(s.things)
    return f"{p.name} felt {s.pick(FEELINGS)} because the {thing} was {s.pick(ADJECTIVES)}."


def _pet(s: _Story) -> str:
    kind = s.pet_kind[0]
    return (f"{s.pet}, the {s.pick(ADJECTIVES)} {kind}, {s.pick(MOTION)} {s.pick(ADVERBS)} "
            f"to the {s.pick(FURNITURE)}.")


def _weather(s: _Story) -> str:
    p = s.someone()
    return (f"On {s.pick(DAYS)} {s.pick(TIMES)} it was {s.pick(WEATHER)}, so {p.name} "
            f"{s.pick(ACTIVITIES)} with {p.his} {s.relative}.")


def _ask(s: _Story) -> str:
    _, things = s.pick(s.things)
    a = s.rng.randint(2, 40)
    return (f'"How many {things} do you have, {s.hero.name}?" {s.pick(ASKED)} {s.friend.name}. '
            f'"I have {a}," said {s.hero.name}.')


def _lost(s: _Story) -> str:
    color, thing = s.treasure
    return (f"{s.hero.name} could not find {s.hero.his} {color} {thing}, so {s.friend.name} "
            f"looked under the {s.pick(FURNITURE)}.")


_BODY = (_add, _sub, _mul, _compare, _count, _walk, _describe, _say, _feel, _pet, _weather,
         _ask, _lost)


def _opening(s: _Story) -> str:
    h = s.hero
    kind = "girl" if h.he == "she" else "boy"
    return (f"{h.name} was a {s.pick(ADJECTIVES)} {kind} who lived in {s.town} with "
            f"{h.his} {s.pet_kind[0]} {s.pet}. {h.his.capitalize()} best friend was {s.friend.name}.")


def _ending(s: _Story) -> str:
    color, thing = s.treasure
    return s.pick((
        f"In the end, {s.hero.name} found the {color} {thing} by the {s.pick(FURNITURE)}.",
        f"That {s.pick(TIMES)}, {s.hero.name} and {s.pet} went home {s.pick(ADVERBS)}.",
        f"{s.friend.name} said goodbye, and {s.hero.name} felt {s.pick(FEELINGS)}.",
    ))


def generate_documents(n_docs: int, seed: int) -> list[str]:
    """`n_docs` short stories, the same for the same seed."""
    docs = []
    for i in range(n_docs):
        rng = random.Random(f"blueberry-synthetic:{seed}:{i}")  # str seeds hash by sha512: stable
        story = _Story(rng)
        body = [rng.choice(_BODY)(story) for _ in range(rng.randint(6, 9))]
        docs.append(" ".join([_opening(story), *body, _ending(story)]))
    return docs
