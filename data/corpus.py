"""
The stories of the default corpus, generated from a seed with no network: simple stories in
plain English from a small grammar (opening, wish, event, problem, help, talk, ending) over
word lists, so a model has to learn real English syntax and a vocabulary of a few thousand
words. The knowledge world that pretraining mixes in is data/world.py.

    story(random.Random(0))     # 'Once upon a time, there was a shy girl named Lily. ...'
"""

import random
import re

# ----------------------------------------------------------------------------------------
# word lists (stories)

BOYS = ("Tom Ben Max Sam Leo Jack Tim Finn Noah Jake Oliver Luke Adam Dan Eli Henry Joe Owen Ryan Theo "
        "Alex Billy Bobby Charlie Chris Danny David Eddie Frank Fred George Harry Isaac Jacob James Jimmy "
        "John Kevin Leon Liam Louis Mark Martin Matt Mike Nick Oscar Paul Peter Philip Robert Ross Roy "
        "Simon Steve Teddy Timmy Tony Victor Walter Will Zack").split()
GIRLS = ("Lily Mia Sue Anna Emma Lucy Sara Kate Zoe Ella Amy Rose Grace Molly Ivy Nora Ruby Jane Lisa Maya "
         "Alice Amber Bella Beth Chloe Clara Daisy Dora Eva Fiona Hannah Hazel Holly Iris Jenny Jess "
         "Julia Katie Laura Lena Lola Lucy Megan Millie Nina Olivia Penny Polly Rachel Rosie Sally "
         "Sophie Stella Susan Tina Violet Wendy").split()
KINDS = {"he": "boy", "she": "girl"}
ANIMALS = ("cat dog bird rabbit frog duck mouse fox bear owl horse cow pig sheep goat lion tiger "
           "puppy kitten turtle fish bee butterfly squirrel deer hen monkey elephant snake").split()
PLACES = ("park garden forest beach farm river pond lake hill field village town school kitchen "
          "playground zoo library market meadow barn yard house shop street woods cave island "
          "bakery castle circus museum harbor station hospital church theater fair orchard bridge "
          "lighthouse mountain desert jungle swamp valley city square camp tent attic").split()
OBJECTS = ("ball kite box book hat toy car boat doll drum stick rock shell cup spoon key map bell "
           "coat shoe sock bag basket blanket pillow crayon pencil flower leaf stone feather ribbon "
           "truck train plane bike sled wagon bucket shovel jar lamp clock mirror ring necklace "
           "balloon puzzle robot teddy whistle umbrella candle cookie cake apple pie sandwich").split()
ADJS = ("big small little tiny huge shiny soft hard red blue green yellow pink purple old new "
        "bright dark warm cold wet dry round long short pretty funny strange fast slow quiet loud "
        "happy sad kind brave silly clever gentle friendly curious sleepy hungry busy lucky").split()
CHAR_ADJS = "happy kind brave silly clever gentle friendly curious shy little playful cheerful".split()
FEEL_GOOD = "happy glad proud excited thankful calm".split()
FEEL_BAD = "sad scared worried upset lonely tired".split()
TIMES = "morning afternoon evening day night".split()
WEATHER = ("the sun was shining", "it was raining", "the wind was blowing", "it was snowing",
           "the sky was blue", "the clouds were grey", "it was very hot", "it was cold outside")
HOBBIES = ("play with {his} ball", "draw pictures", "sing songs", "read books", "run in the grass",
           "jump in puddles", "climb trees", "dance", "build towers with blocks", "look at the stars",
           "help {his} mom in the kitchen", "ride {his} bike", "play hide and seek", "pick flowers",
           "splash in the water", "watch the birds", "make sand castles", "bake cookies")
FINDS = ("under a tree", "behind a rock", "in the grass", "near the water", "in an old box",
         "on the path", "by the fence", "inside a bush", "at the bottom of the hill", "under the bed")
PROBLEMS = ("it was stuck in the mud", "it was too high to reach", "it was broken", "it was very dirty",
            "it was too heavy to carry", "it fell into the water", "the wind took it away",
            "a big dog ran off with it", "it rolled down the hill", "it was lost in the dark")
FIXES = ("pulled it out with all their might", "used a long stick to get it", "fixed it with some tape",
         "washed it with warm water", "carried it home side by side", "found it near the old tree",
         "climbed up slowly and got it", "asked a tall man for help", "followed the path and found it",
         "lit a lamp and looked everywhere")
HELPERS = "mom dad grandma grandpa sister brother friend teacher neighbor aunt uncle".split()
SAYINGS = ("Thank you for helping me!", "We did it!", "I am so happy!", "Let's play again tomorrow.",
           "You are my best friend.", "That was fun!", "Can we share it?", "Look what I found!",
           "Please be careful.", "Don't worry, I will help you.", "I am sorry.", "What a nice day!")
MORALS = ("From that day on, {name} always shared {his} toys.", "{name} learned that friends help each other.",
          "{name} learned to be careful.", "{name} knew that being kind is the best thing.",
          "It was the best day ever.", "{name} smiled and went to sleep.",
          "{name} and {friend} played until the sun went down.", "{name} never forgot that day.")

# Larger lists for the "scene" sentences that give the stories a vocabulary in the thousands.
THINGS = """acorn anchor arrow axe badge bandage banner barrel basin bead bench blade block bolt bone
bottle bowl bracelet branch brick bridge broom brush bubble bucket bundle button cabin cage camera
canoe card carpet carrot cart castle chain chair chalk chest chimney coin comb compass cone cork
cradle crown crystal cushion curtain desk diamond dish door drawer envelope fan fence flag flashlight
fork fountain frame gate gift glass globe glove glue hammer handle harp helmet hook hoop horn hose
jacket jewel jug kettle knot ladder lantern letter lid lock magnet marble mask mat medal mitten
mop mug nail napkin needle nest net notebook oar painting pan paper parcel pebble pen piano pipe
pitcher plate pocket pole pot pouch purse quilt rake rattle rope rug ruler sack sail saucer saw
scarf scissors screw seed shelf shield ship shirt sign skate slide soap sponge spring stamp star
statue stool string suitcase swing sword table tablet tent thread ticket tire towel tower tray
trophy trumpet tub tunnel vase violin wand watch wheel whip window wire wreath yarn zipper""".split()
NATURE = """sun moon star cloud rain snow wind storm rainbow sky sea wave sand shore stream creek
waterfall mountain valley cliff hill meadow desert jungle island volcano puddle mud ice frost fog
thunder lightning dew grass moss weed vine bush tree oak pine maple willow rose tulip daisy lily
sunflower violet clover mushroom berry acorn pumpkin cactus fern reed pebble boulder crater""".split()
CREATURES = """ant bat beaver beetle camel cheetah chick chipmunk crab crocodile crow dolphin donkey
dragonfly eagle flamingo giraffe goose gorilla hamster hedgehog hippo kangaroo koala ladybug
lamb leopard lizard llama lobster mole moose octopus ostrich otter panda parrot peacock pelican
penguin pony puffin raccoon rat robin seal shark skunk sloth snail sparrow spider swan toad
walrus whale wolf worm zebra""".split()
FOODS_STORY = """bread butter cheese honey jam milk juice tea soup rice pasta noodles pizza salad
banana orange grape lemon peach pear plum cherry strawberry melon mango carrot potato tomato
onion pea bean corn cucumber pepper cabbage egg muffin cupcake biscuit cracker candy chocolate
popcorn pancake waffle cereal yogurt sausage porridge pudding toast nut""".split()
ROLES = """baker farmer doctor nurse teacher pilot sailor fisherman painter singer dancer king queen
prince princess knight wizard fairy giant dragon pirate clown chef mailman firefighter police
driver captain gardener builder artist scientist queen mayor shopkeeper librarian""".split()
ADJS_MORE = """beautiful ugly clean dirty fancy plain smooth rough sharp dull heavy light empty full
sweet sour salty bitter fresh rotten tall wide narrow thick thin deep shallow sticky fluffy
furry hairy bumpy shiny sparkly golden silver wooden golden magic secret hidden special favorite
wild tame noisy calm gentle grumpy proud jolly lazy eager polite rude honest naughty helpful
careful careless fearless patient wise foolish strong weak tiny giant ancient modern cozy chilly
frosty sunny rainy windy cloudy stormy foggy muddy dusty crispy crunchy juicy spicy tasty yummy
delicious lovely pleasant terrible wonderful amazing awful horrible perfect simple difficult easy
""".split()
ADVERBS = """slowly quickly quietly loudly happily sadly gently carefully bravely proudly softly
suddenly finally calmly eagerly kindly safely nicely politely patiently brightly""".split()
VERBS_T = """painted cleaned washed carried opened closed pushed pulled kicked threw caught dropped
lifted hugged kissed fed watered planted picked cooked baked cut folded hid shared built fixed
filled emptied counted drew wrote read shook rolled tied wrapped chased followed visited watched
touched tasted smelled called found lost bought sold borrowed returned mended polished colored
decorated stacked sorted hung buried dug raised waved""".split()
VERBS_I = """laughed smiled cried jumped danced sang played ran walked hopped skipped swam climbed
rested slept woke waited listened looked shouted whispered giggled clapped sneezed yawned nodded
shivered wiggled wandered explored hurried rushed tiptoed floated splashed spun twirled""".split()
PREPS = "near under behind beside above below inside outside across around along past".split()
# More nouns, verbs and adjectives, so the stories need a vocabulary of a few thousand words.
THINGS += """album alarm apron armchair attic backpack bagel bakery balcony bandana barn basement
bathtub battery beach bedroom belt bib binoculars birdhouse blender blocks blouse bookcase boots
bow bowtie bracelet broomstick bubblegum bulb bunk cabinet calendar cane canvas cap cape carousel
cassette ceiling cellar cereal chalkboard chandelier checkers cloak closet collar comic computer
cookbook cooler costume cottage couch counter crate crib cube cupboard dartboard denim diary dice
dollhouse doorbell doormat dough dresser driveway dustpan earmuffs easel elevator eraser fireplace
fishbowl flashcard floor flute folder footstool fridge funnel garage garland gazebo glitter goggles
gown greenhouse grill guitar hairbrush hallway hammock hanger harmonica headband heater highchair
hive hoodie hourglass igloo inkwell jigsaw jukebox kayak keyboard kiosk ladle laptop lasso lawn
leash locket lollipop lunchbox mailbox mattress microscope microwave mixer mobile monitor mustard
nightgown nightlight notepad oven overalls padlock paintbrush pajamas pantry parachute pasta
patio pedal pendant pepper perfume photo picnic pinwheel placemat planet playhouse plug pogo
pond popsicle porch postcard poster puppet pyramid quiver radio raft railing raincoat recorder
refrigerator remote rocket rollercoaster roof sandal sandbox satchel saxophone scale scooter
seesaw shampoo shed shower skateboard skirt slipper snorkel snowball snowman sofa spatula
sprinkler staircase stapler steering stethoscope stocking stove strainer straw stroller sunhat
suspenders sweater tambourine teacup teapot telescope television thermos thimble toaster toolbox
toothbrush toothpaste torch tractor trampoline treehouse tricycle tripod trowel tuba tulip tutu
typewriter ukulele unicycle vest vacuum wagon wallet wardrobe washcloth wheelbarrow whiteboard
windmill workbench wristband xylophone yoyo""".split()
NATURE += """anthill avalanche bay beehive blossom bog branch breeze brook bud canyon cavern
cliffside comet coral cove current daybreak dune dusk earth echo eclipse field fireflies flood
flower forest galaxy garden geyser glacier glade grove gust hail harbor hay hedge horizon iceberg
inlet jungle lagoon lava leaves marsh meadow mist moonlight nectar oasis ocean orchard pasture
peak petal plain pollen prairie rainforest ravine reef ridge riverbank rock roots sap seashell
shadow sky snowflake soil spring starlight stem summit sunlight sunrise sunset swamp thicket
tide timber trail treetop twig valley waterfall weeds wildflower woodland""".split()
CREATURES += """alligator antelope armadillo baboon badger beaver bison bluebird buffalo bull
bumblebee butterfly calf canary caterpillar chameleon chimpanzee cobra cockatoo cougar coyote
cricket cub dachshund dinosaur dove duckling eel falcon fawn ferret finch firefly flamingo foal
gazelle gecko gerbil goldfish gopher grasshopper guppy hare hawk heron hummingbird hyena iguana
jaguar jellyfish kitten kiwi lark lemur lynx magpie manatee meerkat minnow mockingbird mongoose
moth mule narwhal newt nightingale orca ostrich owlet panther parakeet pheasant piglet pigeon
platypus poodle porcupine possum pug python quail rabbit ram raven reindeer rhino rooster
salamander sardine scorpion seagull seahorse sheepdog shrimp skylark snail sparrow squid stallion
starfish stork swallow tadpole termite terrier tortoise toucan trout tuna turkey vulture walrus
warthog wasp weasel woodpecker wren yak""".split()
FOODS_STORY += """apricot avocado bacon blueberry broccoli brownie burrito buttermilk cantaloupe
caramel cashew casserole cauliflower celery cheesecake chili cinnamon coconut cornbread cranberry
croissant cupcake custard dates doughnut dumpling eggplant fig fudge garlic gingerbread granola
grapefruit gravy guava hamburger hazelnut hotdog icecream jelly kiwi lasagna lemonade lentil
lettuce lime macaroni marshmallow meatball meringue mint mushroom nectarine oatmeal olive omelet
papaya parsley peanut pecan pickle pineapple pistachio pita plantain pomegranate pretzel prune
pumpkin quiche radish raisin raspberry ravioli rhubarb salmon scone smoothie spaghetti spinach
squash stew sundae sushi taco tangerine toffee tortilla turnip vanilla walnut watermelon zucchini""".split()
ROLES += """acrobat astronaut author barber beekeeper blacksmith butcher carpenter cashier
cowboy dentist detective diver explorer florist goalkeeper guard hunter inventor janitor jester
jeweler juggler lifeguard lumberjack magician mechanic merchant miner musician nanny optician
photographer plumber poet potter professor ranger referee reporter sculptor shepherd sheriff
soldier surgeon tailor umpire veterinarian waiter weaver zookeeper""".split()
ADJS_MORE += """adorable adventurous afraid agile alert amused anxious ashamed awake awkward bashful
bold bored bossy breezy brilliant bubbly calm capable charming cheeky chubby clumsy colorful
comfortable confident cranky crazy creepy crooked cuddly cute daring dazzling delightful dizzy
dreamy eager elegant enormous excellent faint faithful famous fantastic fierce filthy flat fragile
frantic freckled friendly frightened fuzzy generous gigantic glamorous gleaming glorious glossy
graceful grateful greedy gruff handsome hasty healthy helpless hilarious hollow hopeful humble
icy immense itchy jealous jumpy kindly knotty lanky lively lonely loyal magnificent marvelous
massive messy mighty miniature misty mysterious narrow naughty nervous nimble nosy obedient odd
orange peaceful perky plump polished powerful precious prickly puzzled quick radiant ragged rare
relieved restless rich ripe rosy rusty scary scruffy selfish serious shaggy shiny skinny sleek
slimy slippery sloppy sneaky snug soggy sparkling speedy splendid spotless spotted squeaky
steady sticky stormy striped stubborn sturdy superb swift tender thirsty thoughtful thrilled
tidy timid tired tough tricky trusty twinkling unusual upbeat vast velvet vivid wandering wary
weary whimsical wiggly witty wobbly wonderful worried young zany""".split()
ADVERBS += """boldly busily cheerfully clumsily curiously easily excitedly fiercely gladly gracefully
greedily hungrily lazily merrily neatly nervously noisily playfully proudly quickly rarely
shyly silently sleepily smoothly sternly swiftly tenderly thankfully thoughtfully warmly wildly""".split()
VERBS_T += """admired arranged baked balanced bathed bounced brushed buttoned captured carved
chopped collected combed copied covered crushed decorated delivered dusted emptied explored
fetched framed frosted gathered glued grabbed guarded hammered handled hatched hooked ironed
juggled kneaded knitted labeled launched loaded marked measured melted mixed mopped nibbled
noticed offered packed peeled pinned placed plucked poured printed protected punched raked
reached repaired rescued rinsed saved scrubbed sealed searched served sewed shaped shoveled
signed sketched sliced smashed snapped spotted sprinkled squeezed stamped steered stirred
stitched stuffed swept tapped tickled tossed traced trimmed tugged twisted unlocked unpacked
unwrapped weighed whisked wiped zipped""".split()
VERBS_I += """babbled bowed breathed bustled cheered chuckled coughed crawled cuddled dashed dived
drifted dripped fluttered frowned gasped glided glowed grinned groaned growled grumbled hiccuped
hiked hovered howled hummed jogged kneeled leaped lingered marched mumbled paddled panted paused
peeked pounced pranced raced relaxed roamed rolled sailed scampered screamed scurried shrugged
sighed skated skidded slid slouched smirked snored sobbed sparkled sprinted squealed stomped
stumbled strolled struggled stretched sulked surfed trembled trotted tumbled waddled waltzed
wept whistled winked yelled zoomed""".split()
THINGS, NATURE, CREATURES, FOODS_STORY, ROLES, ADJS_MORE, ADVERBS, VERBS_T, VERBS_I = (
    sorted(set(x)) for x in (THINGS, NATURE, CREATURES, FOODS_STORY, ROLES, ADJS_MORE, ADVERBS, VERBS_T, VERBS_I))
SCENES = (
    "{He} {vt} the {adj} {thing} {adv}.",
    "{name} {vi} {adv} {prep} the {nature}.",
    "A {adj2} {creature} {vi} {prep} the {thing}.",
    "There was a {adj} {thing} {prep} the {nature}.",
    "{His} {role} gave {him} some {food}.",
    "{name} and the {creature} {vi} together.",
    "{He} saw a {role} with a {adj2} {thing}.",
    "The {food} was {adj2}, and {name} {vi}.",
    "{He} {vt} the {thing} and {vi}.",
    "Near the {nature}, a {creature} was eating {food}.",
)


def scene(rng, name, he, his, him):
    t = rng.choice(SCENES)
    text = t.format(name=name, He=he.capitalize(), His=his.capitalize(), him=him,
                    vt=rng.choice(VERBS_T), vi=rng.choice(VERBS_I), adv=rng.choice(ADVERBS),
                    prep=rng.choice(PREPS), adj=rng.choice(ADJS + ADJS_MORE), adj2=rng.choice(ADJS_MORE),
                    thing=rng.choice(THINGS + OBJECTS), nature=rng.choice(NATURE),
                    creature=rng.choice(CREATURES + ANIMALS), role=rng.choice(ROLES),
                    food=rng.choice(FOODS_STORY))
    return re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", text)   # "a ugly" -> "an ugly"


def article(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def story_words():
    """Every word the stories use, in lower case: invented names must differ from all of them."""
    return {w.lower() for w in BOYS + GIRLS + ANIMALS + PLACES + OBJECTS + ADJS + THINGS + NATURE
            + CREATURES + FOODS_STORY + ROLES + ADJS_MORE + VERBS_T + VERBS_I}


# ----------------------------------------------------------------------------------------
# stories

def story(rng):
    he = rng.choice(("he", "she"))
    name = rng.choice(BOYS if he == "he" else GIRLS)
    friend = rng.choice([n for n in BOYS + GIRLS if n != name])
    his = "his" if he == "he" else "her"
    him = "him" if he == "he" else "her"
    place, obj, animal = rng.choice(PLACES), rng.choice(OBJECTS), rng.choice(ANIMALS)
    adj = rng.choice(ADJS)
    helper = rng.choice(HELPERS)
    hobby = rng.choice(HOBBIES).format(his=his)
    He = he.capitalize()
    openings = (f"Once upon a time, there was a {rng.choice(CHAR_ADJS)} {KINDS[he]} named {name}.",
                f"One {rng.choice(TIMES)}, {name} went to the {place}.",
                f"{name} was a {rng.choice(CHAR_ADJS)} {KINDS[he]} who lived near a {place}.",
                f"There once was a {rng.choice(CHAR_ADJS)} {animal} named {name}.")
    sents = [rng.choice(openings)]
    sents.append(rng.choice((f"{He} liked to {hobby}.", f"Every day, {he} liked to {hobby}.",
                             f"{name} loved to {hobby} with {friend}.")))
    if rng.random() < 0.5:
        sents.append(f"That day, {rng.choice(WEATHER)}.")
    sents += [scene(rng, name, he, his, him) for _ in range(rng.randint(1, 3))]
    sents.append(rng.choice((f"One day, {he} found {article(adj)} {obj} {rng.choice(FINDS)}.",
                             f"One day, {name} saw {article(adj)} {obj} at the {place}.",
                             f"{name} wanted to play with {article(adj)} {obj}.")))
    bad = rng.choice(FEEL_BAD)
    sents.append(f"But {rng.choice(PROBLEMS)}. {name} felt {bad}.")
    sents.append(rng.choice((f"{He} asked {his} {helper} for help.", f"Then {friend} came to help {him}.",
                             f"{name} did not give up.")))
    sents += [scene(rng, name, he, his, him) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.6:
        sents.append(f'"{rng.choice(SAYINGS)}" said {rng.choice((name, friend))}.')
    sents.append(f"{rng.choice(('Together they', 'So they', 'At last they'))} {rng.choice(FIXES)}.")
    sents.append(f"{name} felt {rng.choice(FEEL_GOOD)} again.")
    if rng.random() < 0.4:
        sents.append(f'"{rng.choice(SAYINGS)}" said {name}.')
    sents.append(rng.choice(MORALS).format(name=name, his=his, friend=friend))
    return " ".join(sents)
