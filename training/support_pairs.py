"""Build the support-desk pair set (tests/data/support_pairs.jsonl) and define its split.

Every pair is hand-written phrasing: each support intent below has several wordings of one question
written for this set (they are ours, no third-party text), with slots for what the customer names.
A positive pair (label 1, kind ``paraphrase``) is two different wordings with the same slot values;
a near-miss (label 0) is two wordings, usually different ones, whose values differ in one way:
``entity`` (Netflix / Spotify), ``direction`` (savings to checking / checking to savings), ``time``
(today / tomorrow), ``number`` (2 / 3 devices), ``negation`` (was charged / was not charged) or
``identifier`` (order AB-1234 / AB-1243, an email, a file, a code). A seeded generator picks the
wordings and values; its output is committed and reviewed, and regenerating it gives the same file.

Split: a pair is in the *tune* half when ``int(sha256(text_a as UTF-8).hexdigest(), 16) % 2 == 0``
and in the *check* half otherwise. Guards were improved looking at the tune half only; the check half
is what docs/guards.md reports and tests/cache/test_support_pairs.py asserts on.

python -m training.support_pairs [--out tests/data/support_pairs.jsonl]
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "support_pairs.jsonl"
SEED = 11


def part_of(text_a: str) -> str:
    """'tune' or 'check' (the module docstring's rule)."""
    return "tune" if int(hashlib.sha256(text_a.encode("utf-8")).hexdigest(), 16) % 2 == 0 else "check"


STREAMING = ["Netflix", "Spotify", "Hulu", "Disney+", "Apple Music", "YouTube Premium", "Amazon Prime", "HBO Max"]
CARRIERS = ["FedEx", "UPS", "DHL", "USPS", "Royal Mail", "Canada Post"]
COUNTRIES = ["Canada", "Mexico", "Germany", "France", "Japan", "Australia", "Brazil", "Italy", "Spain", "India"]
DEVICES = ["iPhone", "iPad", "Android phone", "Samsung tablet", "Kindle", "Chromebook", "MacBook", "Windows laptop",
           "smart TV", "Roku", "Xbox", "PlayStation"]
PAYMENTS = ["PayPal", "Visa card", "Mastercard", "Apple Pay", "Google Pay", "American Express card", "gift card"]
MAIL = ["Gmail", "Outlook", "Yahoo Mail", "iCloud Mail", "ProtonMail"]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge", "Opera"]
LANGUAGES = ["Spanish", "French", "German", "Portuguese", "Japanese", "Italian"]
APPS = ["Slack", "Zoom", "Dropbox", "Trello", "Salesforce", "Shopify", "Zapier", "HubSpot"]
ACCOUNTS = ["savings", "checking", "brokerage", "credit card", "business account"]
PLANS = ["Basic", "Standard", "Premium", "Family", "Pro", "Enterprise"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "June", "July", "August", "September", "October", "November"]
RELATIVE = [("today", "tomorrow"), ("yesterday", "today"), ("last week", "next week"), ("this month", "last month"),
            ("this morning", "this evening"), ("last year", "this year"), ("tonight", "tomorrow")]

# intent: wordings with {e} (an entity of the list named by "slot")
ENTITY_INTENTS = [
    ("STREAMING", ["How do I cancel my {e} subscription?", "What's the way to stop paying for {e}?",
                   "I want to end my {e} membership, how?", "Cancel {e} for me please", "Steps to unsubscribe from {e}",
                   "How can I stop my {e} plan from renewing?"]),
    ("STREAMING", ["Why was I charged twice for {e} this month?", "{e} billed me two times, why?",
                   "I see a double charge from {e} on my statement", "Duplicate {e} payment on my card, what happened?"]),
    ("CARRIERS", ["How do I track a package shipped with {e}?", "Where can I see the tracking for my {e} parcel?",
                  "My order went out via {e}, how do I follow it?", "Tracking a {e} shipment: where do I look?"]),
    ("COUNTRIES", ["Do you ship to {e}?", "Can I get my order delivered in {e}?", "Is delivery to {e} available?",
                   "Do you send orders to customers in {e}?", "Can you deliver to an address in {e}?"]),
    ("COUNTRIES", ["How long does shipping to {e} take?", "What's the delivery time for orders going to {e}?",
                   "How many days until a parcel arrives in {e}?", "Shipping time to {e}?"]),
    ("DEVICES", ["How do I reset my password on the {e}?", "I forgot my password, how do I reset it on my {e}?",
                 "Password reset steps for the {e} app", "Can't remember my password, what do I do on the {e}?"]),
    ("DEVICES", ["The app keeps crashing on my {e}", "Your app crashes every time I open it on the {e}",
                 "Why does the app close by itself on my {e}?", "App won't stay open on {e}"]),
    ("PAYMENTS", ["Can I pay with {e}?", "Do you accept {e} at checkout?", "Is {e} a supported payment method?",
                  "Can I use my {e} to pay for the order?"]),
    ("PAYMENTS", ["Why was my {e} payment declined?", "My {e} keeps getting rejected at checkout",
                  "Payment with {e} failed, why?", "The order won't go through with {e}"]),
    ("MAIL", ["I'm not getting your emails in {e}", "Your verification emails never reach my {e} inbox",
              "Why don't your messages arrive in {e}?", "No emails from you show up in my {e}"]),
    ("BROWSERS", ["The website won't load in {e}", "Your site is blank when I open it with {e}",
                  "Pages don't load on {e}, what's wrong?", "Why doesn't the dashboard work in {e}?"]),
    ("LANGUAGES", ["Can I change the app language to {e}?", "How do I switch the interface to {e}?",
                   "Is there a {e} version of the app?", "Set the language to {e}, how?"]),
    ("APPS", ["How do I connect my account to {e}?", "Is there an integration with {e}?",
              "Steps to link {e} with your platform", "Can I sync my workspace with {e}?"]),
]

# intent: wordings with {x} and {y}; swapping them changes the answer
DIRECTION_INTENTS = [
    ("ACCOUNTS", ["How do I transfer money from {x} to {y}?", "Move funds from my {x} account into {y}",
                  "Can I send money from {x} to my {y} account?", "What's the way to transfer from {x} to {y}?"]),
    ("PLANS", ["How do I switch from the {x} plan to {y}?", "Change my subscription from {x} to {y}",
               "I want to move from {x} to the {y} plan", "Can I go from {x} to {y} mid-cycle?"]),
    ("CURRENCIES", ["Convert 100 {x} to {y}", "What is 100 {x} in {y}?", "How much is 100 {x} when changed to {y}?",
                    "Exchange rate for 100 {x} to {y}"]),
    ("DEVICES", ["How do I move my data from the {x} to the {y}?", "Transfer everything from my {x} to my new {y}",
                 "Migrate my account data from {x} to {y}", "Copy my files from the {x} to the {y}, how?"]),
    ("MAIL", ["How do I forward emails from {x} to {y}?", "Set up forwarding from {x} to {y}",
              "Can I redirect my {x} messages to {y}?", "Forward all mail from {x} to {y}"]),
]

TIME_INTENTS = [
    ["Can I get a delivery {t}?", "Is delivery possible {t}?", "Will my order arrive {t}?", "Can you deliver it {t}?"],
    ["Is customer support open {t}?", "Can I reach an agent {t}?", "Are your phone lines staffed {t}?",
     "Will someone answer the support chat {t}?"],
    ["Why was I charged {t}?", "There's a charge from you {t}, what is it?", "What is the payment you took {t}?",
     "I see a charge dated {t}, why?"],
    ["Can I book an installation appointment for {t}?", "Is there a technician slot {t}?",
     "Schedule the install {t}, possible?", "Do you have a free installation slot {t}?"],
    ["Show me the invoices from {t}", "Where can I download {t}'s invoices?", "I need the invoices for {t}",
     "Get me the billing statements of {t}"],
]
DAY_INTENTS = [
    ["Is the store open on {d}?", "What are your opening hours on {d}?", "Are you open {d}?", "Can I visit the shop on {d}?"],
    ["Will my package be delivered on {d}?", "Do you deliver on {d}?", "Can the courier come on {d}?",
     "Is {d} delivery available?"],
]
MONTH_INTENTS = [
    ["Can I get a refund for the order I placed in {m}?", "Refund for my {m} purchase, possible?",
     "I want my money back for what I bought in {m}", "Is my order from {m} still refundable?"],
    ["Why is my bill higher in {m}?", "My {m} invoice is bigger than usual, why?", "What made the {m} bill go up?",
     "Explain the increase on my {m} statement"],
]

NUMBER_INTENTS = [
    (["Can I use my subscription on {n} devices?", "Does my plan allow {n} devices at once?",
      "Is streaming on {n} screens at the same time allowed?", "Can I watch on {n} devices simultaneously?"],
     [2, 3, 4, 5, 6]),
    (["Why did you bill me ${n}?", "What's this ${n} payment on my card?",
      "There's a ${n} charge from you, what is it for?", "I don't recognise a ${n} charge, what is it?"],
     [9.99, 19.99, 20, 49, 50, 99, 120, 15]),
    (["Can I return an item after {n} days?", "Is a return still possible {n} days after delivery?",
      "I got my order {n} days ago, can I send it back?", "Do you accept returns {n} days later?"],
     [7, 14, 30, 45, 60, 90]),
    (["I ordered {n} items but received fewer", "My order of {n} units arrived incomplete",
      "Only part of my {n}-piece order came", "I paid for {n} products and some are missing"],
     [2, 3, 5, 6, 10, 12]),
    (["How much do {n} licences cost?", "What's the price for {n} seats?",
      "What does it cost for a team of {n} users?", "Price for {n} user licences?"],
     [5, 10, 25, 50, 100, 200]),
    (["My package has been in transit for {n} weeks", "It's been {n} weeks and my parcel hasn't arrived",
      "Order shipped {n} weeks ago and still no delivery", "Still waiting on a package after {n} weeks"],
     [2, 3, 4, 5, 6]),
]

# (affirmative wordings, negated wordings) of one situation
NEGATION_INTENTS = [
    (["My card was charged for the order", "You took the payment for my order", "The order amount left my account"],
     ["My card was not charged for the order", "You never took the payment for my order",
      "The order amount didn't leave my account"]),
    (["Can I return an item with the receipt?", "Is a return possible if I have the receipt?"],
     ["Can I return an item without the receipt?", "Is a return possible if I don't have the receipt?"]),
    (["I received the confirmation email", "The confirmation email arrived"],
     ["I didn't receive the confirmation email", "The confirmation email never arrived"]),
    (["Why can I log in on the website?", "Logging in on the website works for me, why?"],
     ["Why can't I log in on the website?", "Logging in on the website doesn't work for me, why?"]),
    (["The refund has been processed", "My refund went through"],
     ["The refund has not been processed", "My refund didn't go through"]),
    (["My order includes the charger", "The charger is included in my order"],
     ["My order doesn't include the charger", "The charger isn't included in my order"]),
    (["The discount code worked at checkout", "My promo code was accepted"],
     ["The discount code didn't work at checkout", "My promo code was not accepted"]),
    (["Is the warranty valid if I opened the device?", "Does the warranty still apply after I opened it?"],
     ["Is the warranty valid if I haven't opened the device?", "Does the warranty apply if I never opened it?"]),
    (["Notifications are showing on my phone", "I get push notifications from the app"],
     ["Notifications are not showing on my phone", "I don't get push notifications from the app"]),
    (["Two-factor authentication is enabled on my account", "I have 2FA turned on"],
     ["Two-factor authentication is not enabled on my account", "I don't have 2FA turned on"]),
]

LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def _code(rng: random.Random, kind: str) -> str:
    if kind == "order":
        return f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}-{rng.randint(1000, 9999)}"
    if kind == "ticket":
        return f"INC{rng.randint(100000, 999999)}"
    if kind == "letters":
        return "".join(rng.choice(LETTERS) for _ in range(7))
    if kind == "tracking":
        return f"1Z{rng.randint(10**8, 10**9 - 1)}{rng.choice(LETTERS)}{rng.choice(LETTERS)}"
    if kind == "email":
        return f"{rng.choice(['ana', 'ben', 'chris', 'dana', 'eli', 'fay', 'gus'])}.{rng.choice(['ruiz', 'kim', 'nowak', 'patel', 'okafor'])}@{rng.choice(['example.com', 'mail.net', 'corp.io'])}"
    if kind == "file":
        return f"{rng.choice(['invoice', 'export', 'report', 'backup', 'statement'])}_{rng.randint(2019, 2026)}_{rng.randint(1, 12):02d}.{rng.choice(['pdf', 'csv', 'xlsx', 'zip'])}"
    if kind == "version":
        return f"{rng.randint(1, 9)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}"
    if kind == "promo":
        return "".join(rng.choice(LETTERS) for _ in range(5)) + str(rng.randint(10, 99))
    raise ValueError(kind)


def _mutate(rng: random.Random, kind: str, code: str) -> str:
    """A different code of the same shape; sometimes only one character differs."""
    if rng.random() < 0.4 and kind in {"order", "ticket", "letters", "promo", "tracking"}:
        i = rng.choice([j for j, ch in enumerate(code) if ch.isalnum() and j > 1])
        pool = "0123456789" if code[i].isdigit() else LETTERS
        return code[:i] + rng.choice([c for c in pool if c != code[i]]) + code[i + 1:]
    while True:
        other = _code(rng, kind)
        if other != code:
            return other


IDENTIFIER_INTENTS = [
    ("order", ["Where is order {c}?", "Can you check the status of order {c}?", "Order {c} hasn't arrived yet",
               "Any update on my order {c}?"]),
    ("ticket", ["Has ticket {c} been resolved?", "What's happening with support ticket {c}?",
                "Any progress on ticket {c}?", "Ticket {c}: is it fixed yet?"]),
    ("letters", ["Where is my package? Reference code {c}.", "My parcel has reference code {c}, where is it?",
                 "Reference code {c}: when will it be delivered?", "Track the shipment with reference {c}"]),
    ("tracking", ["My tracking number {c} shows no updates", "Tracking {c} has been stuck for days",
                  "Tracking number {c} hasn't changed in days", "No movement on {c} for days, why?"]),
    ("email", ["Please change my login email to {c}", "Update the account email to {c}",
               "Set my account's email address to {c}", "I'd like my sign-in email changed to {c}"]),
    ("file", ["I can't open the file {c} you sent", "The attachment {c} won't open",
              "Your file {c} doesn't open on my computer", "Opening {c} fails, can you help?"]),
    ("version", ["Does version {c} fix the sync bug?", "Is the sync bug fixed in {c}?",
                 "Was the syncing issue resolved in release {c}?", "Has {c} fixed the sync problem?"]),
    ("promo", ["Why is promo code {c} not working?", "The coupon {c} was rejected at checkout, why?",
               "Discount code {c} won't apply, what's wrong?", "Why can't I use voucher {c}?"]),
]

# Paraphrase-only intents (no slot): the common questions of a support desk
PLAIN_INTENTS = [
    ["How do I reset my password?", "I forgot my password, what now?", "What's the way to change a password I can't remember?",
     "Help me recover my password", "Password reset: how does it work?"],
    ["How do I update my billing address?", "Where can I change the address on my invoices?",
     "I moved, how do I edit my billing address?", "Change the billing address on my account"],
    ["How do I delete my account?", "I want to close my account permanently", "Steps to remove my account and data",
     "Can you delete my profile for good?"],
    ["Where can I find my API key?", "How do I get an API key?", "Where is the API token in the dashboard?",
     "I need my API key, where is it?"],
    ["What's your refund policy?", "How do refunds work?", "Can you explain the refund rules?",
     "Under what conditions do you give refunds?"],
    ["How do I change the email on my account?", "Update my account email address", "Can I use a different email to log in?",
     "Switch the email tied to my profile"],
    ["My order arrived damaged", "The item was broken when it got here", "I received a damaged product",
     "The package came with the product smashed"],
    ["How do I download my invoices?", "Where do I get copies of my invoices?", "Can I export my invoices as PDF?",
     "I need to download past invoices"],
    ["How do I enable two-factor authentication?", "How can I turn on 2FA?", "Set up two-step verification on my account",
     "Add an authenticator app to my login"],
    ["Why is my internet so slow?", "My connection is really slow, why?", "Internet speed dropped a lot, what's wrong?",
     "Why are my download speeds so low?"],
    ["How do I contact customer support?", "What's the best way to reach support?", "How can I talk to a human agent?",
     "I need to speak to someone in support"],
    ["Can I change my delivery address after ordering?", "I ordered already, can I update the shipping address?",
     "Is it possible to edit where my order ships?", "Change the delivery address on an existing order"],
    ["How do I update my payment method?", "Change the card on file", "I want to use a different card for billing",
     "Where do I replace my saved credit card?"],
    ["The API returns a 401 error", "I'm getting 401 unauthorized from the API", "Why does every API call fail with 401?",
     "API requests are rejected with status 401"],
    ["How do I export my data?", "Can I download all my data?", "Export everything from my account", "Get a copy of my account data"],
    ["Why was my account suspended?", "My account got locked, why?", "What's the reason my account is blocked?",
     "I've been suspended, what did I do?"],
    ["How do I pair my headphones with the app?", "Connect my earbuds to the app", "Bluetooth pairing for my headphones, how?",
     "My headphones won't show up in the app, how do I pair them?"],
    ["Can I pause my subscription?", "Is there a way to put my plan on hold?", "Freeze my membership for a while",
     "Suspend my subscription temporarily"],
    ["How do I invite a teammate to my workspace?", "Add a new user to my team", "Can I give a colleague access?",
     "Invite someone to join my organisation account"],
    ["What happens when my free trial ends?", "Will I be charged after the trial?", "What happens at the end of the trial period?",
     "Do I get billed automatically once the trial is over?"],
]

ENTITY_LISTS = {"STREAMING": STREAMING, "CARRIERS": CARRIERS, "COUNTRIES": COUNTRIES, "DEVICES": DEVICES,
                "PAYMENTS": PAYMENTS, "MAIL": MAIL, "BROWSERS": BROWSERS, "LANGUAGES": LANGUAGES, "APPS": APPS,
                "ACCOUNTS": ACCOUNTS, "PLANS": PLANS, "CURRENCIES": CURRENCIES}


def _two(rng: random.Random, wordings: list[str], same: bool) -> tuple[str, str]:
    """Two wordings: different ones for a paraphrase; for a near-miss, the same one a third of the time."""
    if not same and rng.random() < 0.33:
        w = rng.choice(wordings)
        return w, w
    return tuple(rng.sample(wordings, 2))  # type: ignore[return-value]


def _num(n: float) -> str:
    return f"{n:.2f}" if isinstance(n, float) and not float(n).is_integer() else str(int(n))


def build(seed: int = SEED) -> list[dict[str, str | int]]:
    rng = random.Random(seed)
    rows: list[dict[str, str | int]] = []

    intent = ""

    def add(a: str, b: str, label: int, kind: str) -> None:
        if rng.random() < 0.5:
            a, b = b, a
        rows.append({"text_a": a, "text_b": b, "label": label, "kind": kind, "intent": intent})

    for round_ in range(6):  # six rounds over every intent, fresh values each time
        for i, (slot, wordings) in enumerate(ENTITY_INTENTS):
            intent = f"entity{i}"
            values = ENTITY_LISTS[slot]
            e1, e2 = rng.sample(values, 2)
            w1, w2 = _two(rng, wordings, True)
            add(w1.format(e=e1), w2.format(e=e1), 1, "paraphrase")
            w1, w2 = _two(rng, wordings, False)
            add(w1.format(e=e1), w2.format(e=e2), 0, "entity")
        for i, (slot, wordings) in enumerate(DIRECTION_INTENTS):
            intent = f"direction{i}"
            x, y = rng.sample(ENTITY_LISTS[slot], 2)
            w1, w2 = _two(rng, wordings, True)
            add(w1.format(x=x, y=y), w2.format(x=x, y=y), 1, "paraphrase")
            w1, w2 = _two(rng, wordings, False)
            add(w1.format(x=x, y=y), w2.format(x=y, y=x), 0, "direction")
        for i, wordings in enumerate(TIME_INTENTS):
            intent = f"time{i}"
            t1, t2 = rng.choice(RELATIVE)
            w1, w2 = _two(rng, wordings, True)
            add(w1.format(t=t1), w2.format(t=t1), 1, "paraphrase")
            w1, w2 = _two(rng, wordings, False)
            add(w1.format(t=t1), w2.format(t=t2), 0, "time")
        for i, wordings in enumerate(DAY_INTENTS):
            intent = f"day{i}"
            d1, d2 = rng.sample(DAYS, 2)
            w1, w2 = _two(rng, wordings, True)
            add(w1.format(d=d1), w2.format(d=d1), 1, "paraphrase")
            w1, w2 = _two(rng, wordings, False)
            add(w1.format(d=d1), w2.format(d=d2), 0, "time")
        for i, wordings in enumerate(MONTH_INTENTS):
            intent = f"month{i}"
            m1, m2 = rng.sample(MONTHS, 2)
            w1, w2 = _two(rng, wordings, True)
            add(w1.format(m=m1), w2.format(m=m1), 1, "paraphrase")
            w1, w2 = _two(rng, wordings, False)
            add(w1.format(m=m1), w2.format(m=m2), 0, "time")
        for i, (wordings, values) in enumerate(NUMBER_INTENTS):
            intent = f"number{i}"
            n1, n2 = rng.sample(values, 2)
            w1, w2 = _two(rng, wordings, True)
            add(w1.format(n=_num(n1)), w2.format(n=_num(n1)), 1, "paraphrase")
            w1, w2 = _two(rng, wordings, False)
            add(w1.format(n=_num(n1)), w2.format(n=_num(n2)), 0, "number")
        for i, (pos, neg) in enumerate(NEGATION_INTENTS):
            intent = f"negation{i}"
            add(*rng.sample(pos if rng.random() < 0.5 else neg, 2), 1, "paraphrase")
            add(rng.choice(pos), rng.choice(neg), 0, "negation")
        for i, (kind, wordings) in enumerate(IDENTIFIER_INTENTS):
            intent = f"identifier{i}"
            c1 = _code(rng, kind)
            c2 = _mutate(rng, kind, c1)
            w1, w2 = _two(rng, wordings, True)
            add(w1.format(c=c1), w2.format(c=c1), 1, "paraphrase")
            w1, w2 = _two(rng, wordings, False)
            add(w1.format(c=c1), w2.format(c=c2), 0, "identifier")
        if round_ < 2:  # no slot: few distinct pairs, and the set stays about half positive
            for i, wordings in enumerate(PLAIN_INTENTS):
                intent = f"plain{i}"
                add(*rng.sample(wordings, 2), 1, "paraphrase")
    return _unique(rows)


def _unique(rows: list[dict[str, str | int]]) -> list[dict[str, str | int]]:
    """The rows without repeats (either order) and without pairs of one text."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in rows:
        key = (str(r["text_a"]), str(r["text_b"]))
        if key not in seen and key[::-1] not in seen and r["text_a"] != r["text_b"]:
            seen.add(key)
            unique.append(r)
    return unique


INTENTS_OUT = OUT.with_name("support_intent_pairs.jsonl")


def _intent_groups() -> list[tuple[str, list[list[str]]]]:
    """Intents that can name the same value: (slot, the wordings of each intent)."""
    groups: dict[str, list[list[str]]] = {}
    for slot, wordings in ENTITY_INTENTS:
        groups.setdefault(slot, []).append([w.replace("{e}", "{v}") for w in wordings])
    out = [(slot, ws) for slot, ws in groups.items() if len(ws) > 1]
    out.append(("RELATIVE", [[w.replace("{t}", "{v}") for w in ws] for ws in TIME_INTENTS]))
    out.append(("DAYS", [[w.replace("{d}", "{v}") for w in ws] for ws in DAY_INTENTS]))
    out.append(("MONTHS", [[w.replace("{m}", "{v}") for w in ws] for ws in MONTH_INTENTS]))
    return out


def build_intents(seed: int = SEED, rounds: int = 8) -> list[dict[str, str | int]]:
    """The other question a cache meets most: a different intent about the same thing ("cancel my
    Netflix" / "why was I charged twice for Netflix", "delivery today?" / "support open today?").
    Per round, each pair of intents that share a slot gives one such near-miss (kind ``intent``) and
    one paraphrase of the first intent, so the set stays half positive."""
    rng = random.Random(seed + 1000)
    values = {**ENTITY_LISTS, "RELATIVE": [t for pair in RELATIVE for t in pair], "DAYS": DAYS, "MONTHS": MONTHS}
    rows: list[dict[str, str | int]] = []
    for _ in range(rounds):
        for slot, intents in _intent_groups():
            for i, j in itertools.combinations(range(len(intents)), 2):
                v = rng.choice(values[slot])
                a, b = rng.choice(intents[i]).format(v=v), rng.choice(intents[j]).format(v=v)
                rows.append({"text_a": a, "text_b": b, "label": 0, "kind": "intent"})
                p, q = rng.sample(intents[i], 2)
                rows.append({"text_a": p.format(v=v), "text_b": q.format(v=v), "label": 1, "kind": "paraphrase"})
    for r in rows:  # either text may be the cached one
        if rng.random() < 0.5:
            r["text_a"], r["text_b"] = r["text_b"], r["text_a"]
    return _unique(rows)


def training_intent(intent: str) -> bool:
    """Intents the verifier may be trained on: half of them, by the SHA-256 of the intent id. The rest
    never reach training, so :func:`unseen_intent_pairs` measures rewordings it has never seen."""
    return int(hashlib.sha256(intent.encode("utf-8")).hexdigest(), 16) % 2 == 0


def training_pairs(seeds: list[int]) -> list[tuple[str, str, int]]:
    """Fresh pairs (other slot values and wordings than the committed set) of the training intents."""
    return [(str(r["text_a"]), str(r["text_b"]), int(r["label"])) for seed in seeds for r in build(seed)
            if training_intent(str(r["intent"]))]


def unseen_intent_pairs(part: str = "check") -> list[dict[str, str | int]]:
    """The committed set's pairs of one half whose intent is never trained on."""
    return [{k: v for k, v in r.items() if k != "intent"} for r in build(SEED)
            if part_of(str(r["text_a"])) == part and not training_intent(str(r["intent"]))]


def main() -> None:
    import argparse
    from collections import Counter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--intents-out", default=str(INTENTS_OUT), help="where the other-intent pairs go")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    rows = build(args.seed)
    with open(args.out, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "intent"}, ensure_ascii=False) + "\n")
    kinds = Counter((r["kind"], r["label"]) for r in rows)
    parts = Counter(part_of(str(r["text_a"])) for r in rows)
    print(f"{len(rows)} pairs to {args.out}: {dict(sorted(kinds.items()))}; halves {dict(parts)}")
    other = build_intents(args.seed)
    with open(args.intents_out, "w", encoding="utf-8") as fh:
        for r in other:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    kinds = Counter((r["kind"], r["label"]) for r in other)
    parts = Counter(part_of(str(r["text_a"])) for r in other)
    print(f"{len(other)} pairs to {args.intents_out}: {dict(sorted(kinds.items()))}; halves {dict(parts)}")


if __name__ == "__main__":
    main()
