"""Cleaning rules: what of a chat is worth learning from. Pure functions over text and messages.

Two levels, each rule switchable in twin.yaml (`build.clean`) and counted by name in `counts`:

Per message, `clean_message`, in this order (a message dropped by one rule is not seen by later ones):
  1. documents pass through untouched (they are chunked elsewhere);
  2. media: a media/sticker message, or one whose every line is a placeholder such as "[photo]", is
     dropped; placeholder lines under a caption are removed;
  3. pings: Discord's raw <@123>, <@!123>, <@&123>, <#123>, @everyone and @here are removed, and
     "@alice" becomes "alice" (an e-mail's "@" is not a ping);
  4. links: a message that is only links is dropped; with `remove_urls`, links inside text go too;
  5. a message left empty is dropped;
  6. non-replies ("lol", "LOL 😂", "hahaha", "gg", "mdr", "jajaja"...) and, separately, messages with
     no letters or digits at all (emoji or punctuation only) are dropped;
  7. length: messages over `max_message_chars` are dropped (pasted logs, copypasta) or cut.

Per session (a time-gap session of already cleaned messages, where a target speaker talks: the build
sets the others aside before these rules and redaction), `clean_session`, in this order:
  1. bots named in `bots`; 2. duplicates; 3. conversation enders ("gtg", "going to sleep"...),
  which drop the session or cut it before the ender; 4. low-quality sessions (fewer than
  `low_quality_min_messages` messages, all shorter than `low_quality_short_chars`).

Matching is Unicode-aware: text is casefolded, apostrophes are deleted, everything that is not a
letter or digit becomes a word break, and letters repeated for emphasis are squeezed ("lmaooo" ->
"lmao"), so "lol!!", "LOL 😂" and "loool" all match "lol".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

Language = Literal["en", "de", "es", "fr", "it", "pt"]
LANGUAGES: tuple[Language, ...] = ("en", "de", "es", "fr", "it", "pt")


class Msg(NamedTuple):
    """One message of a session, as cleaning sees it (the build converts corpus rows to this).

    A named tuple: one is made per message, several times faster than a frozen dataclass (issue 18)."""

    author: str  # the resolved speaker name
    text: str
    kind: str  # text | media | sticker | document
    timestamp_ms: int | None
    role: str = "participant"  # user | assistant | system | tool | participant


# ------------------------------------------------------------------------------- word lists
# Entries are written as people type them; they go through the same normalisation as messages.
# Laughter in all its lengths ("hahahaha", "jajaja", "kkkk", "hehe") is matched by _LAUGH instead.

_NON_REPLIES: dict[str, str] = {
    "en": "lol|lolz|lulz|lmao|lmfao|rofl|lel|kek|kekw|xd|omg|omfg|wtf|bruh|rip|f|gg|ggs|ggwp|gg wp|wp|"
    "pog|poggers|pogchamp|based|smh|ikr|mood|same|true|real|fr|fr fr|nice|noice|w|l|oof|yikes|"
    "wow|woah|whoa|damn|dayum|+1",
    "de": "krass|boah|boa|alter|digga|oha|uff|puh|geil|heftig|läuft|stark|ups|hui|xd|lol",
    "es": "jsjs|jsjsjs|xd|que risa|qué risa|me meo|me muero|hostia|ostia|buah|uff|tremendo|brutal|lol",
    "fr": "mdr|mdrr|ptdr|xptdr|jpp|lol|trop drôle|trop bien|ouf|oups|ouah|waouh|oh là là|ohlala|olala",
    "it": "ahah|boh|mah|lol|xd|che ridere",
    "pt": "rsrs|nossa|caraca|mds|lol",
}

_ENDERS: dict[str, str] = {
    "en": "gtg|g2g|got to go|gotta go|i gotta go|i got to go|i have to go|i need to go|i must go|"
    "gotta run|i gotta run|brb|afk|gn|gnight|good night|goodnight|nite|night night|nighty night|"
    "going to sleep|im going to sleep|i am going to sleep|going to bed|im going to bed|"
    "off to bed|im off to bed|heading to bed|time for bed|gotta sleep|sleep well|sweet dreams|"
    "bye|bye bye|byebye|cya|see ya|see you later|see you tomorrow|see you soon|ttyl|"
    "talk to you later|talk later|peace out|peace|logging off|signing off|im out|heading out|"
    "im heading out|catch you later|laters",
    "de": "gute nacht|gn8|n8|ich muss los|muss los|ich muss weg|muss weg|ich geh schlafen|"
    "geh schlafen|ich gehe schlafen|gehe schlafen|ich bin weg|bin weg|tschüss|tschüs|tschau|"
    "bis morgen|bis später|bis dann|bis bald|man sieht sich|schlaf gut|ich bin raus|bin raus|"
    "ich bin off|bin off|ich bin afk|bin afk",
    "es": "me voy|me tengo que ir|tengo que irme|me voy a dormir|a dormir|buenas noches|chao|chau|"
    "adiós|hasta luego|hasta mañana|nos vemos|hasta pronto|me piro|me largo",
    "fr": "je dois y aller|faut que j'y aille|je dois partir|je vais dormir|je vais me coucher|"
    "je vais au lit|bonne nuit|à plus|a plus|à demain|à bientôt|bisous|je file|je me casse|tchao",
    "it": "buonanotte|notte|devo andare|vado a dormire|ciao ciao|a domani|ci vediamo|ci sentiamo",
    "pt": "boa noite|tenho que ir|vou dormir|tchau|até amanhã|até mais|falou|flw",
}

# Laughter in all its lengths, per language; the common "haha"/"lol"/"xd" family is in every list.
_LAUGH_COMMON = r"a*(?:h+a+){1,}h*|(?:h+e+){2,}h*|(?:h+i+){2,}h*|l+o+l+(?:o+l+)*z*|x+d+"
_LAUGH: dict[str, str] = {
    "en": r"(?:h+o+){3,}|l+m+f*a+o+|r+o+f+l+",
    "de": r"",
    "es": r"a*(?:j+a+){2,}j*|(?:j+[eis]+){2,}j*",
    "fr": r"m+d+r+|x?p+t+d+r+",
    "it": r"",
    "pt": r"k{3,}|(?:r+s+){2,}|(?:h+u+e+){2,}",
}
_GENERIC_LAUGH = re.compile(_LAUGH_COMMON)  # for the words around a farewell ("lol ok gtg")

_APOSTROPHES = str.maketrans("", "", "'’‘`´ʼ")
_APOSTROPHE = re.compile("['’‘`´ʼ]")
_WORD = re.compile(r"[^\W_]+")
_REPEAT = re.compile(r"(.)\1+")
# A clause is a run of words, spaces, apostrophes and hyphens; punctuation and emoji end it.
_CLAUSE = re.compile(r"([\w\s'’‘`´ʼ-]+)([^\w\s'’‘`´ʼ-]*)")

_PLACEHOLDER_LINE = re.compile(
    r"^[ \t]*\[(?:photo|image|video|video message|audio|voice message|sticker|gif|file|contact|"
    r"contact card|location|media|poll|todo list|game|invoice|giveaway|giveaway results|paid media|"
    r"shared content)(?::[^\]\n]*)?\][ \t]*(?:\n|$)",
    re.IGNORECASE | re.MULTILINE,
)
_RAW_MENTION = re.compile(r"<(?:@[!&]?|#)\d+>|(?<![\w.+\-/:])@(?:everyone|here)\b")
_AT = re.compile(r"(?<![\w.+\-/:@])@(?=\w)")
_URL = re.compile(r"<?\b(?:https?://|www\.)[^\s<>]+>?", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]{2,}")
_MEDIA_KINDS = frozenset({"media", "sticker"})


def words(text: str) -> list[str]:
    """The words of `text` for matching: casefolded, apostrophes deleted, emoji/punctuation as breaks."""
    folded = text.casefold()
    # Only letters, digits and spaces (no apostrophe, punctuation or emoji): the words are what split()
    # gives, at half the regex's cost. str.isalnum() is the regex's [^\W_] character by character;
    # "ʼ" (U+02BC, which casefold() makes of "ŉ") is the one apostrophe that is also a letter.
    if folded.replace(" ", "").isalnum() and "ʼ" not in folded:
        return folded.split()
    if _APOSTROPHE.search(folded):  # translate() is slow on text that has nothing to delete
        folded = folded.translate(_APOSTROPHES)
    return _WORD.findall(folded)


def _first_word(text: str) -> str | None:
    """`words(text)[0]` (None when there is none), reading `text` only as far as that word: a word never
    spans whitespace, so it is the first word of the first whitespace-separated piece that has one."""
    rest = text
    while parts := rest.split(None, 1):
        found = words(parts[0])
        if found:
            return found[0]
        rest = parts[1] if len(parts) > 1 else ""
    return None


@lru_cache(maxsize=1 << 16)  # chat vocabulary repeats: a dict lookup beats the regex 5x
def _squeeze(word: str) -> str:
    return _REPEAT.sub(r"\1", word)


def _phrase_keys(entries: list[str]) -> frozenset[str]:
    return frozenset(" ".join(_squeeze(w) for w in words(e)) for e in entries if words(e))


# Words that may open or close a farewell clause without changing it: "ok gtg", "gn everyone".
_STARTERS = _phrase_keys(
    words(
        "ok okay k kk so anyway anyways well alright aight right welp and but yeah yes also aber naja "
        "gut na und jo bueno pues y bon bah et allez allora e dai então"
    )
)
_FILLERS = _phrase_keys(
    words(
        "now guys all everyone everybody yall folks people then too tonight tomorrow later soon bro dude man "
        "mate fam jetzt leute mal dann jungs ihr morgen ahora chicos gente mañana maintenant les gars demain "
        "ragazzi domani galera amanhã"
    )
)


class CleanConfig(BaseModel):
    """Cleaning rules applied at build time; each one is counted in the build report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pings: bool = Field(
        True,
        description="Remove Discord mentions (<@123>, <#123>, @everyone, @here) and the @ of '@alice' "
        "(which becomes 'alice'); e-mail addresses are left alone.",
    )
    languages: list[Language] = Field(
        list(LANGUAGES),
        description="Languages whose built-in non-reply and conversation-ender lists are used: "
        + ", ".join(LANGUAGES)
        + ".",
    )
    non_replies: bool = Field(
        True,
        description="Drop messages that are only a reaction such as 'lol', 'LOL 😂', 'hahaha', 'gg', "
        "'mdr', 'jajaja' (emoji, punctuation and stretched letters ignored).",
    )
    non_replies_extra: list[str] = Field(
        default_factory=list, description="More non-replies of your own, matched like the built-in ones."
    )
    drop_symbol_only: bool = Field(
        True, description="Drop messages with no letters or digits at all (only emoji or punctuation)."
    )
    conversation_enders: Literal["drop", "cut", "off"] = Field(
        "cut",
        description="Sessions with a farewell such as 'gtg' or 'going to sleep': 'cut' keeps what came "
        "before it, 'drop' leaves the session out, 'off' keeps it (the model then learns to leave).",
    )
    conversation_enders_extra: list[str] = Field(
        default_factory=list, description="More farewells of your own, matched like the built-in ones."
    )
    enders_max_chars: int = Field(
        100, ge=1, description="Only messages up to this long are checked for farewells."
    )
    low_quality_sessions: bool = Field(
        True, description="Drop sessions that are both short and made of short messages (thresholds below)."
    )
    low_quality_min_messages: int = Field(
        5, ge=1, description="A session with fewer messages than this is low quality when all are short."
    )
    low_quality_short_chars: int = Field(
        30, ge=1, description="A message shorter than this many characters counts as short."
    )
    drop_media_placeholders: bool = Field(
        True,
        description="Drop photo/sticker/voice messages and lines such as '[photo]' (the model cannot "
        "send media, so it should not learn to write placeholders).",
    )
    drop_link_only: bool = Field(True, description="Drop messages that are only links.")
    remove_urls: bool = Field(False, description="Also remove links inside messages that have other text.")
    drop_duplicates: bool = Field(
        True,
        description="In a session, drop a message that repeats the message right before it by the same "
        "author, and any repeat of a long message (copy-paste spam, see duplicate_min_chars).",
    )
    duplicate_min_chars: int = Field(
        20, ge=1, description="Repeats of messages at least this long are dropped anywhere in the session."
    )
    max_message_chars: int = Field(
        2000, ge=1, description="Messages longer than this are handled by long_messages."
    )
    long_messages: Literal["drop", "cut"] = Field(
        "drop",
        description="'drop' leaves over-long messages out (usually pasted logs or copypasta); 'cut' keeps "
        "their start up to max_message_chars, ending at a word boundary.",
    )
    bots: list[str] = Field(
        default_factory=list,
        description="Speakers whose messages are dropped (bots the exports do not mark), by name; case "
        "does not matter.",
    )

    @field_validator("non_replies_extra", "conversation_enders_extra", "bots")
    @classmethod
    def _no_blank_entries(cls, value: list[str]) -> list[str]:
        if any(not entry.strip() for entry in value):
            raise ValueError("entries must not be empty; remove the blank entry")
        return value


class _Rules:
    """The config turned into frozensets, built once per config (messages are checked by the million)."""

    def __init__(self, config: CleanConfig) -> None:
        non_replies = [e for lang in config.languages for e in _NON_REPLIES[lang].split("|")]
        non_replies += config.non_replies_extra
        # Entries without letters ("+1") are only compared as typed: as words, "+1" would drop "1".
        keys = _phrase_keys([e for e in non_replies if any(c.isalpha() for c in e)])
        self.non_reply_phrases = keys
        self.non_reply_words = frozenset(k for k in keys if " " not in k)
        self.longest_phrase = max((k.count(" ") + 1 for k in keys), default=0)
        # Also compared as typed: "+1" has no word but "1", and an emoji entry has none at all.
        self.non_reply_raw = frozenset(e.strip().casefold() for e in non_replies)
        # casefold() never shortens a text: one longer than every entry cannot be one.
        self.raw_max = max(map(len, self.non_reply_raw), default=0)
        # A text is a listed phrase, or an entry as typed, only if its first word starts one (words()
        # of a casefolded text are its own: casefold() is idempotent); most texts are decided by this.
        self.phrase_first_words = frozenset(key.split(" ")[0] for key in keys)
        self.raw_first_words = frozenset(found[0] for e in self.non_reply_raw if (found := words(e)))
        enders = [e for lang in config.languages for e in _ENDERS[lang].split("|")]
        enders += config.conversation_enders_extra
        self.enders = _phrase_keys(enders)
        # A prefilter: a clause is a farewell only when it holds every word of one, so each farewell is
        # indexed by its word found in the fewest farewells (a text without any skips the clause scan).
        phrases = [frozenset(key.split()) for key in self.enders]
        seen = Counter(word for phrase in phrases for word in phrase)
        self.ender_index: dict[str, list[frozenset[str]]] = {}
        for phrase in phrases:
            rare = min(phrase, key=lambda word: (seen[word], -len(word), word))
            self.ender_index.setdefault(rare, []).append(phrase)
        self.ender_keys = frozenset(self.ender_index)
        # Raw words seen so far, and those of them that squeeze to an index key: a text none of whose
        # words is in `_key_words` has no farewell, decided by two set operations in C instead of
        # squeezing each word (the sets are bounded: cleared when large, then filled again).
        self._seen_words: set[str] = set()
        self._key_words: set[str] = set()
        self.laugh = re.compile(
            "|".join([_LAUGH_COMMON, *(_LAUGH[lang] for lang in config.languages if _LAUGH[lang])])
        )
        self.bots = frozenset(b.strip().casefold() for b in config.bots)
        self.is_non_reply_word = lru_cache(maxsize=1 << 16)(self._is_non_reply_word)
        self.may_start_non_reply = lru_cache(maxsize=1 << 16)(self._may_start_non_reply)

    def may_hold_ender(self, found: Sequence[str]) -> bool:
        """False when no word of `found` squeezes to a farewell's index key (then no clause is one)."""
        seen = self._seen_words
        if not seen.issuperset(found):
            if len(seen) >= _SEEN_WORDS_MAX:
                seen.clear()
                self._key_words.clear()
            keys = self.ender_keys
            for word in found:
                if word not in seen:
                    seen.add(word)
                    if _squeeze(word) in keys:
                        self._key_words.add(word)
        return not self._key_words.isdisjoint(found)

    def _may_start_non_reply(self, word: str) -> bool:
        """Whether a text whose first word is `word` may be a non-reply: that word is one, or starts a
        listed non-reply as typed or squeezed (a text whose first word does not is kept at once)."""
        return (
            self.is_non_reply_word(word)
            or word in self.raw_first_words
            or _squeeze(word) in self.phrase_first_words
        )

    def _is_non_reply_word(self, word: str) -> bool:
        squeezed = _squeeze(word)
        return bool(
            squeezed in self.non_reply_words
            or self.laugh.fullmatch(squeezed)
            or self.laugh.fullmatch(word)  # "kkkk": squeezing would make it "k"
        )


_SEEN_WORDS_MAX = 1 << 17  # distinct raw words remembered by _Rules.may_hold_ender

# Built rules by config object. Not a cached_property: `model_copy(update=...)` would copy a stale one.
# The entry holds the config, so its id cannot be reused while the entry lives.
_RULES: dict[int, tuple[CleanConfig, _Rules]] = {}


def _rules(config: CleanConfig) -> _Rules:
    entry = _RULES.get(id(config))
    if entry is None or entry[0] is not config:
        if len(_RULES) >= 64:
            _RULES.clear()
        entry = _RULES[id(config)] = (config, _Rules(config))
    return entry[1]


# ------------------------------------------------------------------------------- messages


def clean_message(
    text: str, kind: str, config: CleanConfig, counts: Counter[str], *, assistant: bool = False
) -> str | None:
    """The cleaned text of one message, or None when a rule drops it (the rule is counted).

    `assistant=True` is for assistant-style conversations (ChatGPT): their replies are long by nature
    and a short user prompt is still a prompt, so non-reply, symbol-only and length rules are skipped.
    """
    if kind == "document":
        return text
    if config.drop_media_placeholders:
        if kind in _MEDIA_KINDS:
            counts["message dropped: media"] += 1
            return None
        if "[" in text:
            stripped = _PLACEHOLDER_LINE.sub("", text)
            if stripped != text:
                if not stripped.strip():
                    counts["message dropped: media"] += 1
                    return None
                counts["message changed: media placeholder removed"] += 1
                text = stripped.rstrip("\n")
    if config.pings and ("<" in text or "@" in text):
        changed = _RAW_MENTION.sub("", text)
        if changed != text:
            changed = _SPACES.sub(" ", changed)
        changed = _AT.sub("", changed)
        if changed != text:
            counts["message changed: pings removed"] += 1
            text = changed
    if "://" in text or "www." in text or "WWW." in text:
        without = _URL.sub("", text)
        if without != text:
            if config.drop_link_only and not without.strip():
                counts["message dropped: link only"] += 1
                return None
            if config.remove_urls:
                counts["message changed: links removed"] += 1
                text = _SPACES.sub(" ", without)
    text = text.strip()
    if not text:
        counts["message dropped: empty after cleaning"] += 1
        return None
    if assistant:
        return text
    if (config.non_replies or config.drop_symbol_only) and len(text) <= 200:
        reason = _non_reply(text, config, _rules(config))
        if reason is not None:
            counts[reason] += 1
            return None
    if len(text) > config.max_message_chars:
        if config.long_messages == "drop":
            counts["message dropped: longer than max_message_chars"] += 1
            return None
        counts["message cut: longer than max_message_chars"] += 1
        text = _cut(text, config.max_message_chars)
    return text


def _non_reply(text: str, config: CleanConfig, rules: _Rules) -> str | None:
    """The drop reason when `text` is only a reaction or has no words, else None."""
    # Nearly every text needs only its first word here. Not all its words, kept for the farewell check
    # once the session is complete: most texts are unique, and a cache of them cost more than computing
    # the words again there (benchmarks/RESULTS.md, issue 18).
    first = _first_word(text)
    if first is None:
        if config.drop_symbol_only:
            return "message dropped: emoji or punctuation only"
        if config.non_replies and len(text) <= rules.raw_max and text.casefold() in rules.non_reply_raw:
            return "message dropped: non-reply"
        return None
    if not config.non_replies:
        return None
    if not rules.may_start_non_reply(first):
        return None  # nearly every text: no rule below can match
    found = words(text)
    if (
        all(map(rules.is_non_reply_word, found))
        or (len(text) <= rules.raw_max and text.casefold() in rules.non_reply_raw)
        or (len(found) <= rules.longest_phrase and " ".join(map(_squeeze, found)) in rules.non_reply_phrases)
    ):
        return "message dropped: non-reply"
    return None


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at the last whitespace when one is near the end."""
    head = text[:limit]
    space = max(head.rfind(" "), head.rfind("\n"))
    if space >= limit * 0.8:
        head = head[:space]
    return head.rstrip()


def is_conversation_ender(text: str, config: CleanConfig) -> bool:
    """True when a clause of `text` is a farewell ("ok gtg", "going to sleep now, gn everyone").

    A clause (text between punctuation) must be a listed farewell after dropping opening words such as
    "ok"/"anyway" and closing ones such as "now"/"guys"/"lol": "I have to go to the dentist" and "it
    was a good night" are not farewells. A clause ending in "?" is a question, not a goodbye.
    """
    return len(text) <= config.enders_max_chars and _is_ender(text, _rules(config))


def _is_ender(text: str, rules: _Rules) -> bool:
    """`is_conversation_ender` of a text within enders_max_chars, with the config's rules at hand."""
    found = words(text)  # the clauses' words are the text's words
    if not rules.may_hold_ender(found):
        return False
    present = set(map(_squeeze, found))
    index = rules.ender_index
    if not any(phrase <= present for word in present & rules.ender_keys for phrase in index[word]):
        return False
    enders = rules.enders
    for clause, end in _CLAUSE.findall(text):
        if "?" in end:
            continue
        found = [_squeeze(w) for w in words(clause)]
        if " ".join(found) in enders:  # before stripping: "à demain" is a farewell, "demain" a filler
            return True
        while found and (found[0] in _STARTERS or _GENERIC_LAUGH.fullmatch(found[0])):
            found.pop(0)
        while found and (found[-1] in _FILLERS or _GENERIC_LAUGH.fullmatch(found[-1])):
            found.pop()
        if found and " ".join(found) in enders:
            return True
    return False


# ------------------------------------------------------------------------------- sessions


def clean_session(messages: list[Msg], config: CleanConfig, counts: Counter[str]) -> list[Msg] | None:
    """The messages of one session that survive the session rules, or None when the session is dropped.

    Expects messages already passed through `clean_message`. Rule order: bots, duplicates,
    conversation enders, low quality; each drop is counted by rule.
    """
    rules = _rules(config)
    kept = messages
    if rules.bots:
        kept = [m for m in kept if m.author.casefold() not in rules.bots]
        if len(kept) < len(messages):
            counts["message dropped: bot"] += len(messages) - len(kept)
    if config.drop_duplicates:
        kept = _without_duplicates(kept, config.duplicate_min_chars, counts)
    if config.conversation_enders != "off":
        at = _first_ender(kept, config.enders_max_chars, rules)
        if at is not None:
            if config.conversation_enders == "drop" or at == 0:
                counts["session dropped: conversation ender"] += 1
                return None
            counts["session cut: conversation ender"] += 1
            counts["message dropped: at or after a conversation ender"] += len(kept) - at
            kept = kept[:at]
    if not kept:
        counts["session dropped: empty after cleaning"] += 1
        return None
    if (
        config.low_quality_sessions
        and len(kept) < config.low_quality_min_messages
        and all(len(m.text) < config.low_quality_short_chars for m in kept)
    ):
        counts["session dropped: low quality"] += 1
        return None
    return kept


def _first_ender(messages: list[Msg], max_chars: int, rules: _Rules) -> int | None:
    """The index of the first message that is a conversation ender (`is_conversation_ender`), else None.

    A plain loop with the length test inline: it runs on every message of every session, and most are
    decided by it or by the first check of `_is_ender` (issue 18)."""
    for i, m in enumerate(messages):
        if len(m.text) <= max_chars and _is_ender(m.text, rules):
            return i
    return None


def _duplicate_key(text: str) -> str:
    """`text` casefolded with its whitespace runs made single spaces and its ends stripped."""
    key = text.casefold()
    # Already so (the usual case) when no character but " " is whitespace (str.isprintable() is false
    # for every other one), no space is doubled and none ends the text: no split() and join() needed.
    if key.isprintable() and "  " not in key and key[:1] != " " and key[-1:] != " ":
        return key
    return " ".join(key.split())


_NOBODY = object()  # the author before a session's first message: equal to no name


def _without_duplicates(messages: list[Msg], min_chars: int, counts: Counter[str]) -> list[Msg]:
    """`messages` without a repeat of the previous message by the same author, or of any long message.

    Short repeats further apart stay: "yes" can answer two questions in one session.
    """
    kept: list[Msg] = []
    seen_long: set[str] = set()
    author: object = _NOBODY  # the previous message's author and key
    previous = ""
    dropped = 0
    for m in messages:
        key = _duplicate_key(m.text)
        if (m.author == author and key == previous) or (len(key) >= min_chars and key in seen_long):
            dropped += 1
            continue
        if len(key) >= min_chars:
            seen_long.add(key)
        author, previous = m.author, key
        kept.append(m)
    if dropped:
        counts["message dropped: duplicate"] += dropped
    return kept
