"""schoolgate's own categories, the UK safeguarding headings they fall under,
and how the UT1 blacklist categories map onto them.

Policies, reports and the gateway speak only these ids; list formats with their
own names (UT1 today) are translated on import, so a renamed upstream list
never silently changes what a school's policy means.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import IntEnum


class Severity(IntEnum):
    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


@dataclass(frozen=True)
class Category:
    id: str
    title: str
    severity: Severity
    heading: str | None  # a HEADINGS id, or None for operational categories
    description: str = ""


# The UK Safer Internet Centre "appropriate filtering" headings, worded as its
# definitions are (filtering providers are asked to show how they cover each).
HEADINGS: dict[str, str] = {
    "illegal": "Illegal content: child sexual abuse and unlawful terrorist content (IWF and CTIRU lists)",
    "discrimination": "Discrimination: promotes the unjust or prejudicial treatment of people with "
    "protected characteristics of the Equality Act 2010",
    "drugs": "Drugs / substance abuse: displays or promotes the illegal use of drugs or substances",
    "extremism": "Extremism: promotes terrorism and terrorist ideologies, violence or intolerance",
    "gambling": "Gambling: enables gambling",
    "malware-hacking": "Malware / hacking: promotes the compromising of systems including anonymous "
    "browsing and other filter bypass tools as well as sites hosting malicious content",
    "pornography": "Pornography: displays sexual acts or explicit images",
    "piracy": "Piracy and copyright theft: includes illegal provision of copyrighted material",
    "self-harm": "Self harm: promotes or displays deliberate self harm (including suicide and eating disorders)",
    "violence": "Violence: displays or promotes the use of physical force intended to hurt or kill",
}


def _c(id: str, title: str, severity: Severity, heading: str | None, description: str) -> Category:
    return Category(id=id, title=title, severity=severity, heading=heading, description=description)


_S = Severity
CATEGORIES: dict[str, Category] = {
    c.id: c
    for c in (
        _c("pornography", "Pornography", _S.CRITICAL, "pornography",
           "Sexually explicit sites, erotic to hard pornography."),
        _c("adult-mixed", "Mixed adult content", _S.HIGH, "pornography",
           "General sites with a significant share of adult material."),
        _c("lingerie", "Lingerie and swimwear", _S.LOW, None, "Lingerie and swimwear shops and galleries."),
        _c("sexual-education", "Sexual education", _S.NONE, None, "Sex and relationships education and sexual health."),
        _c("dating", "Dating", _S.MEDIUM, None, "Dating and hook-up sites."),
        _c("gambling", "Gambling", _S.HIGH, "gambling", "Betting, casinos, lotteries and poker."),
        _c("drugs", "Drugs", _S.HIGH, "drugs", "Sale or promotion of illegal drugs and substance abuse."),
        _c("extremism", "Extremism and terrorism", _S.CRITICAL, "extremism",
           "Terrorist and violent extremist material and ideologies."),
        _c("hate", "Hate and discrimination", _S.HIGH, "discrimination",
           "Racist, antisemitic and other hate sites inciting hatred."),
        _c("violence", "Violence", _S.HIGH, "violence", "Gore and material promoting physical violence."),
        _c("weapons", "Weapons and dangerous material", _S.HIGH, "violence",
           "Weapons sales and instructions for bombs and dangerous material."),
        _c("self-harm", "Self-harm and suicide", _S.CRITICAL, "self-harm",
           "Promotion of self-harm, suicide and eating disorders."),
        _c("illegal", "Illegal content", _S.CRITICAL, "illegal",
           "Child sexual abuse material (IWF) and unlawful terrorist content (CTIRU)."),
        _c("malware", "Malware", _S.CRITICAL, "malware-hacking",
           "Sites distributing malware, dialers and command-and-control."),
        _c("phishing", "Phishing and fraud", _S.CRITICAL, "malware-hacking", "Credential phishing and fraud sites."),
        _c("hacking", "Hacking", _S.HIGH, "malware-hacking", "Hacking tools and tutorials for compromising systems."),
        _c("cryptojacking", "Cryptojacking", _S.HIGH, "malware-hacking", "In-browser cryptocurrency mining scripts."),
        _c("stalkerware", "Stalkerware", _S.HIGH, "malware-hacking", "Covert phone and computer monitoring apps."),
        _c("ddos", "DDoS services", _S.HIGH, "malware-hacking",
           "Booter and stresser (denial of service for hire) sites."),
        _c("piracy", "Piracy", _S.MEDIUM, "piracy", "Warez, cracks and illegal provision of copyrighted material."),
        _c("cheating", "Academic cheating", _S.MEDIUM, None, "Essay mills and exam answer sites."),
        _c("cults", "Cults and sects", _S.MEDIUM, None, "Groups identified as cults or sects."),
        _c("vpn-proxy", "VPNs, proxies and remote access", _S.HIGH, "malware-hacking",
           "Filter bypass: VPNs, web proxies, residential proxies and remote desktop services."),
        _c("doh", "DNS over HTTPS resolvers", _S.HIGH, "malware-hacking",
           "Public DoH/DoT resolvers, which bypass the school's DNS filtering."),
        _c("dynamic-dns", "Dynamic DNS", _S.MEDIUM, None,
           "Dynamic DNS domains, often used for self-hosted proxies and malware."),
        _c("url-shortener", "URL shorteners", _S.LOW, None, "Link shorteners that hide the destination."),
        _c("social-media", "Social media", _S.LOW, None, "Social networks."),
        _c("chat", "Chat", _S.LOW, None, "Chat rooms and instant messaging."),
        _c("forums", "Forums", _S.LOW, None, "Discussion forums."),
        _c("blogs", "Blogs", _S.NONE, None, "Blog platforms and blogs."),
        _c("games", "Games", _S.LOW, None, "Online games and gaming sites."),
        _c("educational-games", "Educational games", _S.NONE, None, "Games made for learning."),
        _c("streaming", "Audio and video streaming", _S.LOW, None, "Video and music streaming."),
        _c("radio", "Online radio", _S.NONE, None, "Internet radio stations."),
        _c("webmail", "Webmail", _S.LOW, None, "Web-based email."),
        _c("shopping", "Shopping", _S.NONE, None, "Online shops and auctions."),
        _c("advertising", "Advertising and tracking", _S.LOW, None, "Ad servers, trackers and marketing software."),
        _c("filehosting", "File hosting", _S.LOW, None, "File sharing and cloud storage."),
        _c("downloads", "Software downloads", _S.LOW, None, "Software download portals."),
        _c("webhosting", "Web hosting", _S.NONE, None, "Free web hosting platforms."),
        _c("financial", "Finance", _S.NONE, None, "Financial information and investing."),
        _c("banking", "Banking", _S.NONE, None, "Online banking."),
        _c("crypto", "Cryptocurrency", _S.LOW, None, "Cryptocurrency exchanges and wallets."),
        _c("news", "News", _S.NONE, None, "News and magazines."),
        _c("fake-news", "Fake news", _S.MEDIUM, None, "Known disinformation sites."),
        _c("sports", "Sports", _S.NONE, None, "Sports news and clubs."),
        _c("celebrity", "Celebrity", _S.NONE, None, "Celebrity news and gossip."),
        _c("jobsearch", "Job search", _S.NONE, None, "Job boards and recruitment."),
        _c("cooking", "Cooking", _S.NONE, None, "Recipes and cooking."),
        _c("astrology", "Astrology", _S.NONE, None, "Astrology and fortune telling."),
        _c("religion", "Religion", _S.NONE, None, "Religious organisations."),
        _c("education", "Education", _S.NONE, None, "Educational resources and school services."),
        _c("ai", "AI assistants", _S.LOW, None, "Generative AI chatbots and tools."),
        _c("translation", "Translation", _S.NONE, None, "Online translation (can also act as a proxy)."),
        _c("manga", "Manga", _S.LOW, None, "Manga and anime reading sites."),
        _c("mobile-phone", "Mobile phones", _S.NONE, None, "Ringtones, phone apps and accessories."),
        _c("kids", "Children's sites", _S.NONE, None, "Sites made for young children."),
        _c("health", "Health", _S.NONE, None, "Health information and services."),
    )
}


# Every category directory of the UT1 snapshot (and upstream's alias names) to
# a schoolgate id. None means "not imported": whitelists meant for other uses
# (liste_blanche, liste_bu, exceptions_liste_bu, examen_pix, update, cleaning)
# and lists that are not a category of content (reaffected: domains whose
# owner changed; special: UT1's own odds and ends).
# The real UT1 distribution (Université Toulouse Capitole, CC BY-SA 4.0): the whole
# archive, and the same lists one category at a time ({name}: UT1's directory name).
UT1_ARCHIVE_URL = "https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz"
UT1_CATEGORY_URL = "https://dsi.ut-capitole.fr/blacklists/download/{name}.tar.gz"

UT1_MAPPING: dict[str, str | None] = {
    "adult": "pornography",
    "porn": "pornography",
    "agressif": "hate",  # UT1: "racist, antisemitic, inciting hatred"
    "aggressive": "hate",
    "violence": "hate",  # upstream alias of agressif
    "ai": "ai",
    "arjel": "gambling",  # French-licensed betting: still gambling for pupils
    "associations_religieuses": "religion",
    "astrology": "astrology",
    "audio-video": "streaming",
    "bank": "banking",
    "bitcoin": "crypto",
    "blog": "blogs",
    "celebrity": "celebrity",
    "chat": "chat",
    "child": "kids",
    "cleaning": None,
    "cooking": "cooking",
    "cryptojacking": "cryptojacking",
    "dangerous_material": "weapons",
    "dating": "dating",
    "ddos": "ddos",
    "dialer": "malware",
    "doh": "doh",
    "download": "downloads",
    "drogue": "drugs",
    "drugs": "drugs",
    "dynamic-dns": "dynamic-dns",
    "educational_games": "educational-games",
    "examen_pix": None,
    "exceptions_liste_bu": None,
    "fakenews": "fake-news",
    "filehosting": "filehosting",
    "financial": "financial",
    "forums": "forums",
    "mail": "forums",  # upstream alias of forums
    "gambling": "gambling",
    "games": "games",
    "hacking": "hacking",
    "jobsearch": "jobsearch",
    "lingerie": "lingerie",
    "liste_blanche": None,
    "liste_bu": None,
    "malware": "malware",
    "manga": "manga",
    "marketingware": "advertising",
    "mixed_adult": "adult-mixed",
    "mobile-phone": "mobile-phone",
    "phishing": "phishing",
    "press": "news",
    "publicite": "advertising",
    "ads": "advertising",
    "radio": "radio",
    "reaffected": None,
    "redirector": "vpn-proxy",
    "proxy": "vpn-proxy",
    "strict_redirector": "vpn-proxy",
    "strong_redirector": "vpn-proxy",
    "remote-control": "vpn-proxy",  # remote desktops are a filter bypass
    "residential-proxies": "vpn-proxy",
    "vpn": "vpn-proxy",
    "sect": "cults",
    "sexual_education": "sexual-education",
    "shopping": "shopping",
    "shortener": "url-shortener",
    "social_networks": "social-media",
    "special": None,
    "sports": "sports",
    "stalkerware": "stalkerware",
    "translation": "translation",
    "tricheur": "cheating",
    "tricheur_pix": "cheating",
    "update": None,
    "warez": "piracy",
    "webhosting": "webhosting",
    "webmail": "webmail",
}


def category(id: str) -> Category:
    """The category with this id; KeyError names the closest valid ids."""
    try:
        return CATEGORIES[id]
    except KeyError:
        close = difflib.get_close_matches(id, CATEGORIES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(CATEGORIES)}"
        raise KeyError(f"unknown category {id!r}{hint}") from None
