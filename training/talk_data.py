"""Long-form household talk for the keyword head: the negatives a command must never fire on.

Training-time and benchmark only (espeak-ng + sox through `training.audio_data`). A talk clip is
a minute of conversation: two or three espeak voices taking turns reading ordinary household
sentences (many of them holding the command words inside a longer sentence, or a near miss such
as "the lights", "a stop sign", "the spotlight", "on and on", "lights" alone), with natural pauses
between turns, over a bed of silence, a fan, pink or brown noise, music or a TV (music with
distant muffled speech). No clip holds a standalone command.

The split holds out both who speaks and what is said: training and threshold choice use the
training voices of `audio_data.SPLITS` and the ``train`` sentences; the figures use the held-out
voices, variants and noise levels and the ``test`` sentences, none of which training saw. The
sentences were written for this project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training import audio_data as data

SR = data.SR

# Sentences of ordinary talk; about half hold a command word ("lights", "on", "off", "stop")
# inside a longer sentence. Train and test share no sentence.
SENTENCES = {
    "train": [
        "we turned the lights off before the film started",
        "can you leave the lights on for your sister",
        "the bus did not stop at our corner this morning",
        "I think the kettle is off now",
        "she kept talking on and on about the garden",
        "the lights in the hall keep flickering",
        "put the spotlight over the painting",
        "there is a new stop sign at the end of the road",
        "stop it now, you two, and finish your breakfast",
        "don't stop the music yet",
        "lights",
        "the lights",
        "the kitchen lights are too bright in the evening",
        "who switched the lights on in the shed",
        "he fell off his bike on the way home",
        "the party starts at eight tonight",
        "I will stop by the bakery after work",
        "my phone is off, so call the landline",
        "the heating comes on at six",
        "turn the lights off when you go to bed",
        "the traffic lights on the high street are broken",
        "we should get some fairy lights for the window",
        "the dog ran off with my slipper",
        "did you leave the oven on",
        "lights out at nine for the little one",
        "the train will stop at every station",
        "it has been raining on and off all day",
        "the washing machine finished an hour ago",
        "pass me the salt, please",
        "have you seen my reading glasses",
        "the film was too long and too loud",
        "let's have pasta again tomorrow",
        "the cat is sleeping on the sofa",
        "I need to water the plants before we leave",
        "grandma phoned while you were out",
        "the neighbours are having a barbecue",
        "we are out of milk and bread",
        "the garden needs mowing this weekend",
        "your shoes are by the back door",
        "that was a lovely dinner, thank you",
        "the lamp in the bedroom needs a new bulb",
        "can we stop talking about work for one evening",
        "the wifi keeps dropping off in the attic",
        "put the lid on the pot or it will boil over",
        "the stars are very bright tonight",
        "she took the day off to paint the fence",
        "the clocks go back on Sunday",
        "turn it off and on again",
        "the light bulb in the fridge has gone",
        "I left my umbrella on the train",
        "switch on the fan, it is hot in here",
        "he never stops asking questions",
        "shall we walk to the shops",
        "the baby is finally asleep",
        "the lights went out during the storm last year",
        "the bus stop moved across the road",
        "a stop watch would help with the running",
        "flights to Spain are cheap in March",
        "the nights are getting longer",
        "that show is on at nine",
        "my tea has gone cold",
        "where did I put the car keys",
        "on",
        "off",
        "the spotlights",
        "lights please",
        "stop that",
        "lights and music",
        "on and on",
        "off you go",
        "bright lights",
        "nonstop",
        "the stop button",
        "lights on the tree",
        "off the shelf",
        "switch it on",
        "top shelf",
        "alright then",
        "not tonight",
        "shop's shut",
        "spot on",
        "the light's fine",
        "a stop sign",
        "stopping now",
        "the lights, I mean",
        "lightly",
        "it's off",
        "hold on",
        "go on then",
        "lights again",
        "off again",
    ],
    "test": [
        "please do not turn the lights off while I am reading",
        "the lights on the bridge look lovely at night",
        "we had to stop at the garage for petrol",
        "the radio was on all afternoon",
        "he went on and on about the football",
        "there is a spotlight above the stairs",
        "the stop sign by the school was knocked over",
        "stop it now, that is enough",
        "don't stop, keep going, you are nearly there",
        "my brother left all the lights on again",
        "the porch lights come on when it gets dark",
        "the handle came off the cupboard door",
        "what time does the shop close on Saturday",
        "could you stop the tap from dripping",
        "is the dishwasher still on",
        "they switched the lights off at the stadium",
        "the motorway was closed for an hour",
        "she is off to university in September",
        "the street lights are orange on our road",
        "I turned off the alarm and went back to sleep",
        "can you put the kettle on",
        "the kids want a story before bed",
        "our flight was delayed by two hours",
        "I have a dentist appointment on Thursday",
        "the soup needs a little more salt",
        "the printer is out of paper again",
        "the rain has stopped, let's go out",
        "turn the radio down a bit",
        "the lights in this room are too dim for reading",
        "did you lock the front door",
        "my knee hurts when I climb the stairs",
        "there is a spider in the bath",
        "the postman left a parcel next door",
        "the lights flicker whenever the fridge starts",
        "stop worrying, it will be fine",
        "can you stop at the chemist on the way",
        "the oven light has stopped working",
        "we should paint the kitchen in spring",
        "the boiler makes a strange noise",
        "leave the porch light on for dad",
        "I put the heating on for an hour",
        "the power went off for a minute",
        "she turned the lights on and screamed surprise",
        "the football is on the other channel",
        "a bus stop",
        "the spotlight",
        "lights off is what I said yesterday",
        "stop sign",
        "the light",
        "lights later",
        "on and off",
        "not now",
        "stop there",
        "just stop",
        "lights, camera, action",
        "off we go",
        "the top one",
        "spotless",
        "the lights, please",
        "stop the car",
        "lights everywhere",
        "holding on",
        "right on",
        "turned off",
        "dropped it",
        "a spot of tea",
        "the night shift",
        "lights here",
    ],
}


# Threshold choice reads talk by the training voices, but in sentences training never saw: every
# fourth training sentence is kept for it.
SENTENCES["calibration"] = SENTENCES["train"][3::4]
SENTENCES["fit"] = [s for i, s in enumerate(SENTENCES["train"]) if i % 4 != 3]


@dataclass(frozen=True)
class Talk:
    audio: data.F32
    bed: str
    sentences: int
    # [start, end) samples of each spoken sentence (the VAD's truth); () in clips cached before
    # the field existed
    spans: tuple[tuple[int, int], ...] = ()
    texts: tuple[str, ...] = ()  # what each span says


def bed(
    kind: str, split: str, sentences: str, seconds: float, rng: np.random.Generator, seed: int
) -> data.F32:
    """A household background of `kind` (unit-free: `talk_clip` sets its level)."""
    n = int(seconds * SR)
    if kind == "silence":
        return data._seeded_noise("white", seconds, seed) * 1e-3
    if kind == "fan":  # broadband whoosh with a motor hum
        whoosh = data._seeded_noise("brown", seconds, seed) + 0.3 * data._seeded_noise(
            "pink", seconds, seed + 1
        )
        times = np.arange(n) / SR
        hum_hz = float(rng.uniform(45.0, 130.0))
        hum = 0.05 * np.sin(2 * np.pi * hum_hz * times) + 0.02 * np.sin(4 * np.pi * hum_hz * times)
        return (whoosh + hum).astype(np.float32)
    if kind in ("pink", "brown"):
        return data._seeded_noise(kind, seconds, seed)
    music = data.music_bed(seconds, seed)
    if kind == "music":
        return music
    # TV: music under distant, muffled talk (a low-passed espeak voice reading other sentences)
    voices = data.SPLITS[split]
    talk = np.zeros(n, np.float32)
    t = 0.0
    while t < seconds - 0.5:
        s = data.speak(
            str(rng.choice(SENTENCES[sentences])),
            str(rng.choice(voices["voices"])),
            str(rng.choice(voices["variants"])),
            int(rng.integers(140, 200)),
            int(rng.integers(30, 70)),
            60,
        )
        i = int(t * SR)
        k = min(len(s), n - i)
        talk[i : i + k] += s[:k]
        t += len(s) / SR + float(rng.uniform(0.1, 0.6))
    from scipy.signal import butter, sosfilt

    muffled = sosfilt(butter(4, [300.0, 2500.0], "bandpass", fs=SR, output="sos"), talk)
    return (0.5 * music + muffled.astype(np.float32)).astype(np.float32)


BEDS = ("silence", "fan", "pink", "brown", "music", "tv")


def talk_clip(split: str, sentences: str, seed: int, seconds: float = 60.0) -> Talk:
    """A minute of two or three voices of `split` (``train`` / ``test`` in `audio_data.SPLITS`)
    taking turns reading `SENTENCES[sentences]` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    cfg = data.SPLITS[split]
    speakers = [
        (
            str(rng.choice(cfg["voices"])),
            str(rng.choice(cfg["variants"])),
            int(rng.integers(120, 210)),
            int(rng.integers(25, 80)),
            int(rng.choice([0, 0, 30, 60])),
            float(rng.uniform(0.3, 1.0)),
        )
        for _ in range(int(rng.integers(2, 4)))
    ]
    audio = np.zeros(int(seconds * SR), np.float32)
    t = float(rng.uniform(0.3, 1.5))
    count = 0
    spans: list[tuple[int, int]] = []
    texts: list[str] = []
    while t < seconds - 0.5:
        voice, variant, speed, pitch, reverb, gain = speakers[int(rng.integers(len(speakers)))]
        text = str(rng.choice(SENTENCES[sentences]))
        s = data.speak(text, voice, variant, speed, pitch, reverb)
        texts.append(text)
        i = int(t * SR)
        k = min(len(s), len(audio) - i)
        audio[i : i + k] += s[:k] * gain
        spans.append((i, i + k))
        count += 1
        # Natural pauses: mostly a breath to a couple of seconds, sometimes a longer silence.
        pause = float(rng.choice([rng.uniform(0.25, 1.0), rng.uniform(1.0, 3.0)], p=[0.6, 0.4]))
        t += len(s) / SR + pause
    kind = str(rng.choice(BEDS))
    noise = bed(kind, split, sentences, seconds, rng, seed)
    snr = rng.choice(np.array(cfg["snr_db"], dtype=object)) if kind != "silence" else None
    mixed = data.mix(audio, noise, snr)
    return Talk(mixed.astype(np.float32), kind, count, tuple(spans), tuple(texts))


# Training only: short near misses made of a command word and another word, the utterances a
# standalone gate still passes (held-out talk fired on "lights here", "just stop"). None is a
# held-out sentence (`near_misses` checks), none is a command.
_LIGHTS_AFTER = [
    "up",
    "down",
    "out",
    "dimmed",
    "now",
    "first",
    "too",
    "tomorrow",
    "outside",
    "upstairs",
    "were on",
    "went off",
    "are on",
    "and fans",
    "in the hall",
    "please",
    "again",
    "all night",
    "for later",
    "over there",
    "at six",
    "one",
]
_ON_BEFORE = [
    "hang",
    "come",
    "carry",
    "put it",
    "game",
    "try it",
    "move",
    "lean",
    "keep",
    "what's",
    "rely",
    "so",
    "the light's",
    "is it",
    "turn",
    "switch",
    "lights were",
]
_OFF_BEFORE = [
    "hands",
    "kick",
    "day",
    "log",
    "take it",
    "back",
    "show",
    "cut",
    "way",
    "bite",
    "it's",
    "set",
    "fell",
    "paid",
    "one",
    "lights went",
    "the light's",
]
_STOP_WITH = [
    "stop by",
    "stop now",
    "please stop",
    "full stop",
    "stop here",
    "stop moving",
    "pit stop",
    "last stop",
    "stop it",
    "stop and look",
    "the stops",
    "stops",
    "stop talking",
    "shop",
    "top",
    "stock",
    "stopped",
    "don't stop",
    "stop please",
    "a stop",
    "bus stops",
    "stop watch",
    "stop that now",
    "top stop",
    "stop again",
]


def near_misses() -> list[str]:
    """The training near misses (see above); none is a held-out sentence."""
    out = [f"lights {w}" for w in _LIGHTS_AFTER]
    out += [f"{w} on" for w in _ON_BEFORE] + [f"{w} off" for w in _OFF_BEFORE]
    out += list(_STOP_WITH)
    out += [f"the lights {w}" for w in ("on the tree", "off the hook", "are off", "seem on")]
    out = list(dict.fromkeys(out))
    held_out = set(SENTENCES["test"])
    assert not held_out & set(out), sorted(held_out & set(out))
    return out


def short_sentences(sentences: str, words: int = 3) -> list[str]:
    """The near misses of a sentence set: its entries of at most `words` words."""
    return [s for s in SENTENCES[sentences] if len(s.split()) <= words]
