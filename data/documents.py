"""
Documents about new entities: the world's second task, document QA (docs/METHOD.md). Each
document is a short text about one new person, town or animal that tells 4-8 facts of the
world's relations in a random order, each in one of its relation's statement templates, with
sentences between them that tell no fact, in the stories' words. Its questions
(two phrasings per fact) are asked only after a stream has read it: a document's text is
statements, never a question or a Q/A line.

- Subjects are invented names no other set of the world uses, so each question can be answered
  from one document only. Answers are open, as the new-fact stream's are: names and towns are
  invented anew, every other answer comes from the part of its relation's pool that the
  background never uses, so no (relation, answer) pair of a document is a background fact's
  (a closed world draws from the background's 15 answers, as its new facts do).
- A text has one sentence per line (LINE), as pretraining has its statements: a statement in the
  middle of a line would be spelled in tokens pretraining never holds (" People" is not the
  "People" that starts a line) and teaches less (docs/RESULTS.md, "Teach a document").
- `chunks` cuts a document into pieces of one to a few sentences, the unit a stream teaches in
  one batch; `rewrites` tells a chunk again in other words (other templates, order and
  fillers), the paper's synthetic rewrites made by the world's own generator.
- The documents are drawn from a generator of their own, seeded from the world's seed, after
  the world is made: they change none of the world's sets and no pretraining text.

    world = make_world(1337)
    docs = make_documents(world)          # 20 documents
    docs[0].text                          # 'Everyone in the village knows Derume.\nThe garden of Derume is ...'
    docs[0].questions()[0]                # {'question': 'What does Derume grow in the garden?', 'second': ...}
    docs[0].chunks()                      # [Chunk(...), Chunk(...)]: 2 facts each
    rewrites(docs[0].chunks()[0], 3, random.Random(0))    # 3 texts telling the first chunk's facts
"""

import random
from dataclasses import dataclass

from data.corpus import story_words
from data.world import NUMBERS, OPEN_WORDS, RELATIONS, TOWN_ENDS, YEARS, Fact, make_names, render

N_DOCUMENTS = 20                  # documents facts.json holds (data/prepare.py)
FACTS_PER_DOCUMENT = (4, 8)       # facts of one document, at most as many as its kind has relations
FACTS_PER_CHUNK = 2               # fact sentences of one chunk (chunks)
LINE = "\n"                       # between a text's sentences: one sentence per line, as in pretraining
KIND_ORDER = ("person", "town", "person", "animal")   # the kinds of documents 1, 2, 3, ..., in a cycle

# Sentences that tell no fact, in words the stories use. None has the shape of any statement
# template (no " is ", " lives in ", ...), so a reader, or a test, can tell a fact's sentence from a
# filler; none names a word that could be an answer (a town animal, a place nearby).
INTROS = {
    "person": ("Everyone in the village knows {s}.", "Once upon a time, there was a friendly neighbor named {s}.",
               "People in the town like {s}."),
    "town": ("Once upon a time, there was a town called {s}.", "There once was a little town named {s}.",
             "Everyone knows the little town of {s}."),
    "animal": ("Once upon a time, there was an animal named {s}.", "There once was a little animal called {s}.",
               "Everyone in the village knows an animal called {s}."),
}
FILLERS = {
    "person": ("Everyone likes {s}.", "{s} does not give up.", "{s} always looks happy.",
               "{s} likes to sing songs.", "{s} smiled at the sun.", "{s} looked at the stars at night."),
    "town": ("The people of {s} are friendly.", "At night, {s} gets very quiet.",
             "Every spring there was a fair in {s}.", "Everyone in {s} knows each other.",
             "Life in {s} was calm and happy.", "Every house in {s} looks nice."),
    "animal": ("{s} can run very fast.", "{s} has bright eyes.", "{s} loves warm days.", "Everyone likes {s}.",
               "{s} likes to run and jump.", "{s} looked at the stars at night."),
}
TITLES = {"person": "{s}", "town": "The town of {s}", "animal": "{s} the animal"}


# ----------------------------------------------------------------------------------------
# telling facts as a text

def tell(rng, kind, subject, facts, intro):
    """Sentences telling facts (in this order) about subject: each fact in a random statement
    template, fillers after some of them, an intro first if asked.
    Returns (sentences, states): states[i] is the index in facts of the fact sentence i states,
    None for an intro or filler. No filler is used twice."""
    fillers = rng.sample(FILLERS[kind], len(FILLERS[kind]))
    sentences, states = [], []
    if intro:
        sentences.append(rng.choice(INTROS[kind]).format(s=subject))
        states.append(None)
    for i, fact in enumerate(facts):
        sentences.append(rng.choice(fact.statements()))
        states.append(i)
        if fillers and rng.random() < 0.3:
            sentences.append(fillers.pop().format(s=subject))
            states.append(None)
    return sentences, states


@dataclass
class Chunk:
    """A few consecutive sentences of a document: the unit a stream teaches in one batch."""
    kind: str
    subject: str
    facts: list                   # the Facts its sentences state, in the text's order
    sentences: list               # str

    @property
    def text(self):
        return LINE.join(self.sentences)


@dataclass
class Document:
    """A short text about one new entity. questions()[i] asks about facts[i]."""
    kind: str                     # person | town | animal
    subject: str
    facts: list                   # Fact, in the order the text tells them
    sentences: list               # str
    states: list                  # per sentence: the index in facts of the fact it states, or None (no fact)

    @property
    def title(self):
        return TITLES[self.kind].format(s=self.subject)

    @property
    def text(self):
        return LINE.join(self.sentences)

    def questions(self):
        """Per fact: its relation's first question, a second phrasing (the last, the one the
        fact stream never trains) and the answer, ending with a period as in facts.json."""
        out = []
        for f in self.facts:
            (q, a), (second, _) = f.questions()[0], f.questions()[-1]
            out.append({"question": q, "second": second, "answer": a})
        return out

    def chunk_bounds(self, size=FACTS_PER_CHUNK):
        """[(first, end)] sentence ranges: consecutive sentences, a chunk closed once it holds
        `size` fact sentences; sentences after the last fact join the last chunk."""
        bounds, first, n = [], 0, 0
        for i, state in enumerate(self.states):
            n += state is not None
            if n == size:
                bounds.append((first, i + 1))
                first, n = i + 1, 0
        if n or not bounds:                            # a last chunk with fewer facts (or a text with none)
            bounds.append((first, len(self.sentences)))
        elif first < len(self.sentences):              # only fillers left: they join the last chunk
            bounds[-1] = (bounds[-1][0], len(self.sentences))
        return bounds

    def chunks(self, size=FACTS_PER_CHUNK):
        """The document cut into chunks of one to a few sentences, each with 1..size facts."""
        out = []
        for first, end in self.chunk_bounds(size):
            facts = [self.facts[s] for s in self.states[first:end] if s is not None]
            out.append(Chunk(self.kind, self.subject, facts, self.sentences[first:end]))
        return out

    def to_dict(self):
        """The document as facts.json holds it."""
        return {"title": self.title, "kind": self.kind, "subject": self.subject, "text": self.text,
                "sentences": [{"text": t, "fact": s} for t, s in zip(self.sentences, self.states)],
                "chunks": [{"text": LINE.join(self.sentences[a:b]), "sentences": [a, b],
                            "facts": [s for s in self.states[a:b] if s is not None]}
                           for a, b in self.chunk_bounds()],
                "facts": [f.to_dict() for f in self.facts],
                "questions": self.questions()}

    @classmethod
    def from_dict(cls, d):
        """The document of a facts.json entry (to_dict's)."""
        facts = [Fact(f["subject"], f["relation"], f["answer"][:-1]) for f in d["facts"]]
        return cls(d["kind"], d["subject"], facts, [s["text"] for s in d["sentences"]],
                   [s["fact"] for s in d["sentences"]])


def rewrites(chunk, n, rng):
    """n texts telling the chunk's facts again, each in other words: the facts in a new order,
    each in a random statement template, with other fillers (sometimes an intro); the same
    facts, and no other."""
    out = []
    for _ in range(n):
        facts = rng.sample(chunk.facts, len(chunk.facts))
        sentences, _ = tell(rng, chunk.kind, chunk.subject, facts, intro=rng.random() < 0.3)
        out.append(LINE.join(sentences))
    return out


def every_line(doc):
    """Every line the model may read about the document: every statement of its facts, every
    intro and filler about its subject, and the Q/A line of each of its facts' questions
    (data/prepare.py checks that pretraining holds all their tokens)."""
    lines = []
    for f in doc.facts:
        lines += f.statements()
        lines += [f.qa_text(i) for i in range(len(f.questions()))]
    return lines + [t.format(s=doc.subject) for t in INTROS[doc.kind] + FILLERS[doc.kind]]


# ----------------------------------------------------------------------------------------
# drawing documents

def answer_pools(rng, world, closed):
    """Relation -> the answers its documents cycle through (rendered), for relations whose answers
    are words, years or numbers: the pool less the background's answers of that relation, in a
    random order (closed: the background's answers, the 15 every fact of the world draws from)."""
    pools = {}
    for r, spec in RELATIONS.items():
        used = sorted({f.object for f in world.background if f.relation == r})
        words = {"year": YEARS, "number": NUMBERS}.get(spec.pool) or OPEN_WORDS.get(spec.pool)
        if closed and used:
            pool = used
        elif words is not None:
            pool = [w for w in (render(spec.pool, v) for v in words) if w not in used]
        else:
            continue                                   # names and towns: invented for each fact
        pools[r] = rng.sample(pool, len(pool))
    return pools


def make_documents(world, n=N_DOCUMENTS, usable=lambda doc: True, closed=False, facts=FACTS_PER_DOCUMENT):
    """n documents about new entities (kinds in KIND_ORDER's cycle), drawn from a generator seeded
    from the world's seed; a document that fails usable(doc) is drawn again (data/prepare.py:
    one spelled in a token pretraining never holds). Fewer than n if 20 * n draws give fewer."""
    rng = random.Random(f"documents {world.seed}")
    taken = story_words() | {name.lower() for name in world.invented}
    pools, made = answer_pools(rng, world, closed), {}

    def answer(r):
        pool = RELATIONS[r].pool
        if r not in pools:
            suffixes = TOWN_ENDS if pool == "town" else ("",)
            return make_names(rng, 1, taken, suffixes)[0]
        made[r] = made.get(r, -1) + 1
        return pools[r][made[r] % len(pools[r])]

    docs = []
    for _ in range(20 * n):
        if len(docs) == n:
            break
        kind = KIND_ORDER[len(docs) % len(KIND_ORDER)]
        subject = make_names(rng, 1, taken, TOWN_ENDS if kind == "town" else ("",))[0]
        relations = [r for r, spec in RELATIONS.items() if spec.kind == kind]
        k = rng.randint(facts[0], min(facts[1], len(relations)))
        doc_facts = [Fact(subject, r, answer(r)) for r in rng.sample(relations, k)]
        sentences, states = tell(rng, kind, subject, doc_facts, intro=True)
        doc = Document(kind, subject, doc_facts, sentences, states)
        if usable(doc):
            docs.append(doc)
    return docs
