"""
The knowledge world: invented people, towns and animals, each with its own subset of 26
relations, and answers drawn from open pools, so a model has to store each fact and cannot
guess it from a short list of usual answers.

- Answer pools: invented names (2-3 syllables), invented towns, years, numbers, and two
  thirds of the stories' foods, jobs, animals, things and nature words. The last third of
  those words is held out: it appears in the stories only, never as an answer in pretraining.
- Background facts (pretraining) use each answer of a relation at most once.
- New facts (the finetuning stream) are about new entities and take each answer from the
  part of the relation's pool the background did not use: no (relation, answer) pair of
  the stream occurs in the background (`collision_share` measures it).
- Two generalisation sets: "new answers" (known relations, answers from the held-out third
  of the words, never an answer of any relation in pretraining) and "new relations"
  (relations pretraining never had, with their own templates).
- `closed=True` gives the old kind of world for comparison: every relation draws from a
  short list of 15 answers, shared by old and new facts.

    world = make_world(seed=1337)
    world.background[0].statements()   # ['Bemuko lives in Dafovale.', ...]
    world.new_facts(10)                 # the first 10 facts of the new-fact stream
"""

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from data.corpus import ANIMALS, CREATURES, FOODS_STORY, NATURE, OBJECTS, ROLES, THINGS, article, story_words

# ----------------------------------------------------------------------------------------
# answer pools

WORDS = {"food": FOODS_STORY, "role": ROLES, "creature": sorted(set(CREATURES + ANIMALS)),
         "thing": sorted(set(THINGS + OBJECTS)), "nature": NATURE}
# Every third word of each list (sorted) is held out of every relation's answers; a word in two
# lists is held out of both.
HELD_OUT = {w for words in WORDS.values() for w in words[2::3]}
OPEN_WORDS = {k: [w for w in words if w not in HELD_OUT] for k, words in WORDS.items()}
HELD_WORDS = {k: [w for w in words if w in HELD_OUT] for k, words in WORDS.items()}
YEARS = [str(y) for y in range(1700, 2025)]
NUMBERS = [str(n) for n in range(10, 1000)]


def render(pool, value):
    """How an answer is written in a sentence: 'a fox', 'the meadow', 'Kobado', '1987'."""
    if pool in ("role", "creature", "thing"):
        return article(value)
    if pool == "nature":
        return "the " + value
    return value


# ----------------------------------------------------------------------------------------
# relations: (subject kind, answer pool, statement templates, question templates).
# {s} is the subject, {o} the answer. The last question is the unseen phrasing: never in a
# finetuning batch, asked after it.

@dataclass(frozen=True)
class Relation:
    kind: str
    pool: str
    statements: tuple
    questions: tuple


def rel(kind, pool, statements, questions):
    return Relation(kind, pool, tuple(statements), tuple(questions))


RELATIONS = {
    # people
    "home": rel("person", "town",
                ["{s} lives in {o}.", "{s} has a house in {o}.", "The home of {s} is in {o}.", "{s} is from {o}."],
                ["Where does {s} live?", "In which town is the home of {s}?", "What town is {s} from?"]),
    "job": rel("person", "role",
               ["{s} works as {o}.", "The job of {s} is {o}.", "Every day {s} goes to work as {o}.",
                "{s} has a job as {o}."],
               ["What is the job of {s}?", "What does {s} do for work?", "What work does {s} do?"]),
    "pet": rel("person", "creature",
               ["{s} has {o} as a pet.", "The pet of {s} is {o}.", "{s} takes care of {o} at home.",
                "At home, {s} keeps {o}."],
               ["What pet does {s} have?", "What is the pet of {s}?", "What animal does {s} keep at home?"]),
    "food": rel("person", "food",
                ["{s} likes to eat {o}.", "The favorite food of {s} is {o}.", "{s} loves {o} more than any other food.",
                 "{s} eats {o} every day."],
                ["What does {s} like to eat?", "What is the favorite food of {s}?", "Which food does {s} love?"]),
    "friend": rel("person", "name",
                  ["The best friend of {s} is {o}.", "{s} plays with {o} every day.",
                   "{s} has a best friend called {o}.", "Every day {s} visits {o}, a best friend."],
                  ["Who is the best friend of {s}?", "Who does {s} play with every day?",
                   "What is the name of the best friend of {s}?"]),
    "born": rel("person", "year",
                ["{s} was born in {o}.", "The birth year of {s} is {o}.", "{s} came into the world in {o}.",
                 "The year {s} was born was {o}."],
                ["When was {s} born?", "What is the birth year of {s}?", "In what year was {s} born?"]),
    "toy": rel("person", "thing",
               ["The favorite toy of {s} is {o}.", "{s} loves to play with {o}.", "{s} always carries {o}.",
                "The best toy {s} has is {o}."],
               ["What is the favorite toy of {s}?", "What does {s} love to play with?",
                "What toy does {s} like best?"]),
    "sister": rel("person", "name",
                  ["The sister of {s} is called {o}.", "{s} has a sister named {o}.",
                   "{s} lives with a sister called {o}.", "The name of the sister of {s} is {o}."],
                  ["What is the name of the sister of {s}?", "Who is the sister of {s}?",
                   "What is the sister of {s} called?"]),
    "teacher": rel("person", "name",
                   ["The teacher of {s} is {o}.", "{s} learns to read with a teacher named {o}.",
                    "At school, {s} has a teacher called {o}.", "{s} is a student of {o}."],
                   ["Who is the teacher of {s}?", "What is the name of the teacher of {s}?",
                    "Who teaches {s} at school?"]),
    "place": rel("person", "nature",
                 ["{s} likes to go to {o}.", "The favorite place of {s} is {o}.", "On sunny days {s} walks to {o}.",
                  "{s} feels happy at {o}."],
                 ["Where does {s} like to go?", "What is the favorite place of {s}?",
                  "Where does {s} walk on sunny days?"]),
    "garden": rel("person", "food",
                  ["{s} grows {o} in the garden.", "In the garden of {s} there is {o}.",
                   "The garden of {s} is full of {o}.", "{s} plants {o} every spring."],
                  ["What does {s} grow in the garden?", "What is in the garden of {s}?",
                   "What does {s} plant every spring?"]),
    "fear": rel("person", "creature",
                ["{s} is afraid of {o}.", "The thing {s} fears most is {o}.", "{s} runs away from {o}.",
                 "{s} gets scared when there is {o}."],
                ["What is {s} afraid of?", "What does {s} fear most?", "What does {s} run away from?"]),
    "dream": rel("person", "role",
                 ["{s} wants to be {o} one day.", "The dream of {s} is to become {o}.",
                  "When {s} grows up, {s} wants to be {o}.", "{s} hopes to work as {o} one day."],
                 ["What does {s} want to be?", "What is the dream of {s}?", "What does {s} hope to become?"]),
    "number": rel("person", "number",
                  ["The lucky number of {s} is {o}.", "{s} thinks {o} is a lucky number.",
                   "The number {s} likes best is {o}.", "{s} always picks the number {o}."],
                  ["What is the lucky number of {s}?", "Which number does {s} like best?",
                   "What number does {s} always pick?"]),
    # towns
    "mayor": rel("town", "name",
                 ["The mayor of {s} is {o}.", "{s} has a mayor called {o}.", "The town of {s} is led by {o}.",
                  "In {s}, the mayor is {o}."],
                 ["Who is the mayor of {s}?", "Who leads the town of {s}?", "What is the name of the mayor of {s}?"]),
    "near": rel("town", "nature",
                ["{s} is next to {o}.", "{s} lies near {o}.", "Next to the town of {s} there is {o}.",
                 "People in {s} can walk to {o}."],
                ["What is next to {s}?", "What lies near {s}?", "What can people in {s} walk to?"]),
    "known": rel("town", "thing",
                 ["{s} is famous for {o}.", "The town of {s} is known for {o}.", "People go to {s} to see {o}.",
                  "In the middle of {s} there is {o}."],
                 ["What is {s} famous for?", "What is the town of {s} known for?", "What do people go to {s} to see?"]),
    "built": rel("town", "year",
                 ["{s} was built in {o}.", "The town of {s} was founded in {o}.",
                  "The first house in {s} was built in {o}.", "{s} has stood since {o}."],
                 ["When was {s} built?", "In what year was the town of {s} founded?", "Since when has {s} stood?"]),
    "market": rel("town", "food",
                  ["The market in {s} sells {o}.", "People in {s} buy {o} at the market.", "{s} is known for its {o}.",
                   "Farmers in {s} grow {o}."],
                  ["What does the market in {s} sell?", "What do people in {s} buy at the market?",
                   "What do farmers in {s} grow?"]),
    "symbol": rel("town", "creature",
                  ["The symbol of {s} is {o}.", "The flag of {s} shows {o}.", "{s} has {o} on its flag.",
                   "Everyone in {s} loves {o}, the town animal."],
                  ["What is the symbol of {s}?", "What does the flag of {s} show?",
                   "What animal is on the flag of {s}?"]),
    # animals
    "species": rel("animal", "creature",
                   ["{s} is {o}.", "The animal called {s} is {o}.", "Everyone knows that {s} is {o}.",
                    "{s} was born as {o}."],
                   ["What kind of animal is {s}?", "What animal is {s}?", "Which animal is called {s}?"]),
    "owner": rel("animal", "name",
                 ["The owner of {s} is {o}.", "{s} belongs to {o}.", "{s} lives with {o}.",
                  "{s} is looked after by {o}."],
                 ["Who is the owner of {s}?", "Who does {s} belong to?", "Who looks after {s}?"]),
    "eats": rel("animal", "food",
                ["{s} eats {o}.", "The favorite food of {s} is {o}.", "{s} likes to eat {o}.",
                 "Every morning {s} eats {o}."],
                ["What does {s} eat?", "What is the favorite food of {s}?", "What does {s} like to eat?"]),
    "lives": rel("animal", "town",
                 ["{s} lives in {o}.", "The home of {s} is in {o}.", "{s} was found in {o}.",
                  "{s} sleeps every night in {o}."],
                 ["Where does {s} live?", "Where is the home of {s}?", "Where does {s} sleep every night?"]),
    "age": rel("animal", "year",
               ["{s} was born in {o}.", "The birth year of {s} is {o}.", "{s} first opened its eyes in {o}.",
                "{s} has been around since {o}."],
               ["When was {s} born?", "What is the birth year of {s}?", "Since when has {s} been around?"]),
    "plays": rel("animal", "thing",
                 ["{s} plays with {o}.", "The favorite toy of {s} is {o}.", "{s} likes to chew on {o}.",
                  "{s} hides {o} under the bed."],
                 ["What does {s} play with?", "What is the favorite toy of {s}?", "What does {s} like to chew on?"]),
}

# Relations pretraining never has: the "new relations" generalisation set.
NEW_RELATIONS = {
    "boat": rel("person", "name",
                ["The boat of {s} is called {o}.", "{s} has a boat named {o}.", "{s} painted the name {o} on a boat.",
                 "The little boat {o} belongs to {s}."],
                ["What is the boat of {s} called?", "What is the name of the boat of {s}?",
                 "What boat does {s} have?"]),
    "uncle": rel("person", "town",
                 ["The uncle of {s} lives in {o}.", "{s} has an uncle in {o}.", "Every day {s} visits an uncle in {o}.",
                  "An uncle of {s} has a house in {o}."],
                 ["Where does the uncle of {s} live?", "In which town does {s} have an uncle?",
                  "Where does {s} visit an uncle?"]),
    "bag": rel("person", "thing",
               ["{s} keeps {o} in a bag.", "In the bag of {s} there is {o}.", "{s} always carries {o} in a bag.",
                "The bag of {s} has {o} in it."],
               ["What does {s} keep in a bag?", "What is in the bag of {s}?", "What does {s} always carry in a bag?"]),
    "draws": rel("person", "creature",
                 ["{s} likes to draw {o}.", "The favorite painting of {s} shows {o}.", "{s} drew {o} on a big paper.",
                  "Every painting of {s} has {o} in it."],
                 ["What does {s} like to draw?", "What does the favorite painting of {s} show?",
                  "What is in every painting of {s}?"]),
    "bridge": rel("town", "name",
                  ["The bridge in {s} is called {o}.", "{s} has a bridge named {o}.",
                   "People in {s} walk over a bridge called {o}.", "The old bridge of {s} is {o}."],
                  ["What is the bridge in {s} called?", "What is the name of the bridge in {s}?",
                   "What bridge do people in {s} walk over?"]),
    "sleeps": rel("animal", "nature",
                  ["{s} sleeps near {o}.", "At night {s} sleeps by {o}.", "The bed of {s} is near {o}.",
                   "Every night {s} goes to sleep near {o}."],
                  ["Where does {s} sleep?", "Where does {s} sleep at night?",
                   "Where does {s} go to sleep every night?"]),
}
ALL_RELATIONS = {**RELATIONS, **NEW_RELATIONS}
KINDS = ("person", "town", "animal")


@dataclass
class Fact:
    subject: str
    relation: str
    object: str                      # the answer as written in a sentence, without the period

    def statements(self):
        return [t.format(s=self.subject, o=self.object) for t in ALL_RELATIONS[self.relation].statements]

    def questions(self):
        """(question, answer) pairs; the answer ends with a period."""
        return [(q.format(s=self.subject), self.object + ".") for q in ALL_RELATIONS[self.relation].questions]

    def qa_text(self, i):
        q, a = self.questions()[i]
        return f"Q: {q} A: {a}"

    def to_dict(self):
        return {"subject": self.subject, "relation": self.relation, "answer": self.object + ".",
                "statements": self.statements(), "questions": [q for q, _ in self.questions()]}


# ----------------------------------------------------------------------------------------
# names: made of syllables that every name shares, so the tokenizer spells a new name in the
# same syllable tokens as an old one (data/prepare.py)

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]     # 70 syllables, names of 2-3
TOWN_ENDS = "wood field brook hill vale port ford bury dale haven".split()

def make_names(rng, n, taken, suffixes=("",)):
    """n new names of 2-3 syllables (plus a suffix, for towns), none in `taken` (lower case)."""
    names = []
    while len(names) < n:
        syllables = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
        name = (syllables + rng.choice(suffixes)).capitalize()
        if name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    return names


class Answers:
    """The answers of one relation. Open: the background takes each answer of the first half
    of the shuffled pool once, and new facts cycle through the second half, so no new fact
    shares its answer with a background fact of its relation; names, towns and numbers are
    drawn fresh every time. Closed: every fact draws from the same 15 answers."""

    def __init__(self, rng, pool, invent, closed=False):
        self.rng, self.pool, self.invent, self.closed = rng, pool, invent, closed
        words = {"year": YEARS, "number": NUMBERS}.get(pool) or OPEN_WORDS.get(pool)
        self.words = rng.sample(words, len(words)) if words else None      # None: invented names
        if closed:
            self.words = (self.words or invent(pool, 15))[:15]
        self.used = 0

    def room(self):
        """Whether the background may take one more answer of this relation."""
        return self.words is None or self.closed or self.used < len(self.words) // 2

    def background(self):
        if self.words is None or self.closed:
            return render(self.pool, self.fresh())
        self.used += 1
        return render(self.pool, self.words[self.used - 1])

    def new(self, i):
        """The answer of the relation's i-th new fact."""
        if self.words is None or self.closed:
            return render(self.pool, self.fresh())
        rest = self.words[len(self.words) // 2:]
        return render(self.pool, rest[i % len(rest)])

    def fresh(self):
        """An answer drawn anew: one of the 15 (closed), or an invented name."""
        return self.rng.choice(self.words) if self.closed else self.invent(self.pool, 1)[0]


@dataclass
class World:
    seed: int
    background: list                              # facts pretraining teaches
    new: list                                     # the new-fact stream, in order
    new_answers: list                             # generalisation set: answers never an answer in pretraining
    new_relations: list                           # generalisation set: relations pretraining never had
    invented: list = field(repr=False, default_factory=list)   # every invented name and town

    def new_facts(self, n, usable=lambda facts: True, at_most=False):
        """The first n facts of the new-fact stream whose entity passes `usable` (data/prepare.py
        skips entities with a token that never occurs in pretraining)."""
        return take(self.new, n, usable, at_most)


def take(facts, n, usable, at_most=False):
    """The first n facts of whole entities that pass usable(their facts); at_most: all there
    are if fewer pass, else fewer than n is an error."""
    by_subject, out = {}, []
    for f in facts:
        by_subject.setdefault(f.subject, []).append(f)
    for group in by_subject.values():
        if usable(group):
            out += group
        if len(out) >= n:
            return out[:n]
    if at_most:
        return out
    raise ValueError(f"only {len(out)} facts available, {n} asked")


def make_world(seed=1337, n_people=200, n_towns=30, n_animals=30, n_new=2000, n_set=200,
               relations_per_entity=(3, 8), closed=False):
    """Background entities and their facts, then new entities for the stream and for the two
    generalisation sets (n_set facts each), in the same mix of kinds; every name distinct."""
    rng = random.Random(seed)
    taken, invented = story_words(), []

    def invent(pool, n):
        out = make_names(rng, n, taken, suffixes=TOWN_ENDS if pool == "town" else ("",))
        invented.extend(out)
        return out

    def entity(kind, relations, answer, room=lambda r: True):
        """One new entity of this kind with a random subset of its kind's relations."""
        subject = invent("town" if kind == "town" else "name", 1)[0]
        rels = [r for r, spec in relations.items() if spec.kind == kind and room(r)]
        k = min(rng.randint(*relations_per_entity), len(rels))
        return [Fact(subject, r, answer(r)) for r in sorted(rng.sample(rels, k), key=list(relations).index)]

    def entities(relations, n, answer):
        facts = []
        while len(facts) < n:
            kind = rng.choices(KINDS, weights=(n_people, n_towns, n_animals))[0]
            if any(spec.kind == kind for spec in relations.values()):
                facts += entity(kind, relations, answer)
        return facts[:n]

    answers = {r: Answers(rng, spec.pool, invent, closed) for r, spec in RELATIONS.items()}
    background = []
    for kind, n in zip(KINDS, (n_people, n_towns, n_animals)):
        for _ in range(n):
            background += entity(kind, RELATIONS, lambda r: answers[r].background(), lambda r: answers[r].room())

    made = Counter()                              # new facts so far, per relation
    def new_answer(r):
        made[r] += 1
        return answers[r].new(made[r] - 1)
    new = entities(RELATIONS, n_new, new_answer)

    held = {r: rng.sample(HELD_WORDS[spec.pool], len(HELD_WORDS[spec.pool]))
            for r, spec in RELATIONS.items() if spec.pool in HELD_WORDS}
    def held_answer(r):
        made[r] += 1
        return render(RELATIONS[r].pool, held[r][made[r] % len(held[r])])
    new_answers = entities({r: RELATIONS[r] for r in held}, n_set, held_answer)

    fresh = {r: Answers(rng, spec.pool, invent) for r, spec in NEW_RELATIONS.items()}
    new_relations = entities(NEW_RELATIONS, n_set, lambda r: fresh[r].background())
    return World(seed, background, new, new_answers, new_relations, invented)


def collision_share(world):
    """Share of new facts whose (relation, answer) pair is also a background fact's."""
    pairs = {(f.relation, f.object) for f in world.background}
    return sum((f.relation, f.object) in pairs for f in world.new) / len(world.new)


def answer_entropy(facts):
    """Per relation: (facts, distinct answers, entropy of the answers in bits)."""
    by = {}
    for f in facts:
        by.setdefault(f.relation, Counter())[f.object] += 1
    out = {}
    for r, c in by.items():
        n = sum(c.values())
        out[r] = (n, len(c), -sum(k / n * math.log2(k / n) for k in c.values()))
    return out


def fact_document(rng, facts):
    """All facts about one entity in random order, each as a random statement or question."""
    lines = []
    for f in rng.sample(facts, len(facts)):
        if rng.random() < 0.5:
            lines.append(rng.choice(f.statements()))
        else:
            lines.append(f.qa_text(rng.randrange(len(f.questions()))))
    return "\n".join(lines)


def background_documents(rng, world, repeats):
    by_subject = {}
    for f in world.background:
        by_subject.setdefault(f.subject, []).append(f)
    return [fact_document(rng, facts) for _ in range(repeats) for facts in by_subject.values()]
