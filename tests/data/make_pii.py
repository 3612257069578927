"""Writes pii.jsonl, the synthetic PII evaluation set of tests/test_redaction.py.

Kept so that the set can be read as code (which formats, which hard negatives) and extended;
the fixed seed makes a re-run reproduce the file byte for byte:

    .venv/bin/python tests/data/make_pii.py

Card and IBAN checksums are computed here, independently of dialogue.security.privacy, so that the set
checks the module rather than repeating it. Half of the messages hold PII in varied national
formats; the other half hold only things that look like it: order and tracking numbers, prices,
dates, times, postcodes, versions, URLs, article numbers, IMEIs, card numbers that fail the Luhn
check and IBANs with a wrong checksum. Each line: {"text": ..., "spans": [{"label", "start", "end"}]}.
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

OUTPUT = Path(__file__).with_name("pii.jsonl")
SEED = 13616
N_POSITIVE = 180
N_NEGATIVE = 180

PII_FIELDS = {"email": "EMAIL", "phone": "PHONE", "card": "CARD", "iban": "IBAN"}

T = TypeVar("T")


def luhn_digit(payload: str) -> str:
    """The check digit that makes `payload` + digit pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def ean_digit(payload: str) -> str:
    """The EAN-13 check digit: weights 1 and 3, not Luhn."""
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(payload))
    return str((10 - total % 10) % 10)


def iban_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in rearranged))
    return f"{98 - number % 97:02d}"


class Values:
    """Generators of field values; cycling over shuffled format lists so every format appears."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._cycles: dict[str, Iterator[Any]] = {}

    def cycle(self, key: str, items: list[T]) -> T:
        if key not in self._cycles:
            shuffled = list(items)
            self.rng.shuffle(shuffled)
            self._cycles[key] = itertools.cycle(shuffled)
        value: T = next(self._cycles[key])
        return value

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    def fill(self, pattern: str) -> str:
        """'#' becomes a random digit, 'A' a random upper-case letter."""
        return "".join(
            self.rng.choice(string.digits)
            if c == "#"
            else self.rng.choice(string.ascii_uppercase)
            if c == "A"
            else c
            for c in pattern
        )

    # PII

    def email(self) -> str:
        local = self.cycle("email.local", EMAIL_LOCALS)
        domain = self.cycle("email.domain", EMAIL_DOMAINS)
        return f"{local}@{domain}"

    def phone(self) -> str:
        return self.fill(self.cycle("phone", PHONE_FORMATS))

    def card_number(self) -> tuple[str, str]:
        network, prefixes, length = self.cycle("card.network", CARD_NETWORKS)
        prefix = self.rng.choice(prefixes)
        payload = prefix + self.digits(length - len(prefix) - 1)
        return network, payload + luhn_digit(payload)

    def card(self) -> str:
        network, number = self.card_number()
        return self._group_card(network, number)

    def _group_card(self, network: str, number: str) -> str:
        style = self.cycle("card.style", ["plain", "spaces", "spaces", "dashes", "network"])
        if style == "plain":
            return number
        if style == "network" and network in ("amex", "diners"):
            second = 6
            return f"{number[:4]} {number[4 : 4 + second]} {number[4 + second :]}"
        separator = "-" if style == "dashes" else " "
        return separator.join(number[i : i + 4] for i in range(0, len(number), 4))

    def iban_parts(self) -> tuple[str, str]:
        country, layout = self.cycle("iban.country", IBAN_LAYOUTS)
        bban = ""
        for kind, count in layout:
            if kind == "bank":
                bban += self.rng.choice(BANK_CODES[country])
            elif kind == "n":
                bban += self.digits(count)
            elif kind == "c":
                bban += "".join(
                    self.rng.choice(string.ascii_uppercase)
                    if self.rng.random() < 0.15
                    else str(self.rng.randrange(10))
                    for _ in range(count)
                )
        return country, bban

    def iban(self) -> str:
        country, bban = self.iban_parts()
        return self._format_iban(country + iban_check_digits(country, bban) + bban)

    def _format_iban(self, compact: str) -> str:
        style = self.cycle("iban.style", ["plain", "grouped", "grouped", "grouped", "plain", "lower"])
        grouped = " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
        if style == "plain":
            return compact
        return grouped.lower() if style == "lower" else grouped

    # Look-alikes

    def badcard(self) -> str:
        network, number = self.card_number()
        wrong = number[:-1] + str((int(number[-1]) + self.rng.randrange(1, 10)) % 10)
        if len(wrong) != 16:
            # The point of this field is a 16-digit number that fails Luhn; other lengths become 16.
            payload = "4" + self.digits(14)
            wrong = payload + str((int(luhn_digit(payload)) + self.rng.randrange(1, 10)) % 10)
            network = "visa"
        return self._group_card(network, wrong)

    def badiban(self) -> str:
        country, bban = self.iban_parts()
        check = iban_check_digits(country, bban)
        if self.rng.random() < 0.5:
            check = f"{(int(check) + self.rng.randrange(1, 90)) % 97 + 2:02d}"
            if check == iban_check_digits(country, bban):
                check = f"{(int(check) + 1) % 97 + 2:02d}"
            compact = country + check + bban
        else:
            # A typo in the account number: one digit changed; mod 97 catches every single-digit error.
            positions = [i for i, c in enumerate(bban) if c.isdigit()]
            i = self.rng.choice(positions)
            changed = bban[:i] + str((int(bban[i]) + self.rng.randrange(1, 10)) % 10) + bban[i + 1 :]
            compact = country + check + changed
        return self._format_iban(compact)

    def order(self) -> str:
        return self.fill(self.cycle("order", ORDER_FORMATS))

    def price(self) -> str:
        return self.cycle("price", PRICES)

    def date(self) -> str:
        day, month, year = (
            self.rng.randint(1, 28),
            self.rng.randint(1, 12),
            self.rng.choice([2025, 2026, 2027]),
        )
        style = self.cycle(
            "date", ["iso", "dotted", "us", "slashed", "text", "short", "dashed", "dotted_short"]
        )
        months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
        return {
            "iso": f"{year}-{month:02d}-{day:02d}",
            "dotted": f"{day:02d}.{month:02d}.{year}",
            "us": f"{month}/{day}/{year}",
            "slashed": f"{day:02d}/{month:02d}/{year}",
            "text": f"{day} {months[month - 1]} {year}",
            "short": f"{day}.{month}.",
            "dashed": f"{day:02d}-{month:02d}-{year}",
            "dotted_short": f"{day:02d}.{month:02d}.{year % 100:02d}",
        }[style]

    def time(self) -> str:
        return self.cycle("time", TIMES)

    def qty(self) -> str:
        return self.cycle("qty", QUANTITIES)

    def address(self) -> str:
        return self.cycle("address", ADDRESSES)

    def tracking(self) -> str:
        return self.fill(self.cycle("tracking", TRACKING_FORMATS))

    def version(self) -> str:
        return self.cycle("version", VERSIONS)

    def url(self) -> str:
        return self.cycle("url", URLS)

    def ean(self) -> str:
        payload = self.rng.choice(["40", "42", "50", "87", "84", "30", "76"]) + self.digits(10)
        return payload + ean_digit(payload)

    def customer(self) -> str:
        return self.fill(
            self.cycle("customer", ["K-######", "########", "CUST######", "KD ######", "#######"])
        )

    def imei(self) -> str:
        payload = self.rng.choice(["35", "86", "01", "49"]) + self.digits(12)
        return payload + luhn_digit(payload)

    def giftcard(self) -> str:
        alphabet = string.ascii_uppercase + string.digits
        return "-".join("".join(self.rng.choice(alphabet) for _ in range(4)) for _ in range(4))

    def ip(self) -> str:
        return self.cycle(
            "ip", ["192.168.178.1", "192.168.0.254", "10.0.0.138", "172.16.254.1", "192.168.100.200"]
        )

    def isbn(self) -> str:
        return self.cycle(
            "isbn", ["978-3-16-148410-0", "9783161484100", "978-0-306-40615-7", "978 2 07 036002 4"]
        )

    def sizes(self) -> str:
        return self.cycle("sizes", ["38 40 42 44", "38, 40 and 42", "S, M and L", "36/38", "42 43 44 45"])


EMAIL_LOCALS = [
    "anna.schmidt",
    "jean-luc.dupont",
    "m.vandenberg",
    "lucia.garcia",
    "j.smith",
    "tom1987",
    "first_last",
    "pieter",
    "sophie.martin",
    "klaus-peter.mueller",
    "ines.fernandez",
    "noah+orders",
    "anna.schmidt+shop",
    "JOHN.DOE",
    "Lucia.Garcia",
    "service-team",
    "e.de.jong",
    "camille.roux+newsletter",
    "Marta_Lopez82",
    "x",
    "h.meier",
    "olivia.brown.uk",
    "sean.o'brien",
]
EMAIL_DOMAINS = [
    "gmail.com",
    "web.de",
    "gmx.de",
    "t-online.de",
    "orange.fr",
    "free.fr",
    "ziggo.nl",
    "mail.kpn.nl",
    "hotmail.es",
    "telefonica.net",
    "outlook.com",
    "yahoo.co.uk",
    "students.uni-mannheim.de",
    "example.org",
    "mail.example.com",
    "icloud.com",
    "proton.me",
    "Hotmail.ES",
    "GMAIL.COM",
    "posteo.de",
    "eu.company-mail.io",
]
PHONE_FORMATS = [
    # Germany
    "+49 30 #######",
    "+49 (0)30 ########",
    "030 ########",
    "030/#######",
    "0171 #######",
    "0171-#######",
    "0171 / #######",
    "0664 / #######",
    "+49 171 #######",
    "+49151########",
    "0049 171 #######",
    "(030) #######",
    "089 ### ###-##",
    # France
    "06 ## ## ## ##",
    "06.##.##.##.##",
    "+33 6 ## ## ## ##",
    "+33 (0)6 ## ## ## ##",
    "06########",
    "01-##-##-##-##",
    "+33 1 ## ## ## ##",
    "07 ## ## ## ##",
    # Netherlands
    "06-########",
    "06 ########",
    "+31 6 ########",
    "020 ### ####",
    "+31 20 ### ####",
    "0031 6 #### ####",
    "+31 (0)6 ## ## ## ##",
    "010-#######",
    # Spain
    "6## ## ## ##",
    "+34 6## ### ###",
    "+34 91# ## ## ##",
    "91# ### ###",
    "6########",
    "+346########",
    # United Kingdom
    "020 7946 0###",
    "07700 900###",
    "+44 7700 900###",
    "+44 (0)20 7946 0###",
    "0161 496 0###",
    # United States
    "(415) 555-0###",
    "415-555-0###",
    "415.555.0###",
    "+1 415 555 0###",
    "+1-212-555-0###",
    "1-800-555-0###",
    "555-0###",
    "+1 (646) 555-0###",
    "4155550###",
    # Switzerland, Austria, Belgium, Italy
    "+41 44 ### ## ##",
    "044 ### ## ##",
    "+43 1 ### ####",
    "0664 #######",
    "+32 2 ### ## ##",
    "0470 ## ## ##",
    "+39 06 #### ####",
    "347 ### ####",
    "+39 347 #######",
]
CARD_NETWORKS: list[tuple[str, list[str], int]] = [
    ("visa", ["4"], 16),
    ("visa", ["4"], 16),
    ("visa", ["4"], 13),
    ("mastercard", ["51", "52", "53", "54", "55"], 16),
    ("mastercard", ["2221", "2300", "2500", "2720"], 16),
    ("amex", ["34", "37"], 15),
    ("discover", ["6011", "65"], 16),
    ("jcb", ["3528", "3540", "3589"], 16),
    ("diners", ["36"], 14),
    ("maestro", ["6759", "5018"], 19),
    ("unionpay", ["62"], 16),
    ("unionpay", ["62"], 19),
]
BANK_CODES = {
    "NL": ["ABNA", "INGB", "RABO", "TRIO", "KNAB"],
    "GB": ["NWBK", "BARC", "LOYD", "HBUK", "MIDL"],
    "IE": ["AIBK", "BOFI"],
    "IT": ["X", "A"],
}
# (kind, count): "n" digits, "c" upper-case alphanumerics, "bank" a bank code from BANK_CODES.
IBAN_LAYOUTS: list[tuple[str, list[tuple[str, int]]]] = [
    ("DE", [("n", 18)]),
    ("DE", [("n", 18)]),
    ("AT", [("n", 16)]),
    ("CH", [("n", 5), ("c", 12)]),
    ("FR", [("n", 10), ("c", 11), ("n", 2)]),
    ("NL", [("bank", 4), ("n", 10)]),
    ("NL", [("bank", 4), ("n", 10)]),
    ("BE", [("n", 12)]),
    ("ES", [("n", 20)]),
    ("IT", [("bank", 1), ("n", 10), ("c", 12)]),
    ("GB", [("bank", 4), ("n", 14)]),
    ("IE", [("bank", 4), ("n", 14)]),
    ("LU", [("n", 3), ("c", 13)]),
    ("PL", [("n", 24)]),
    ("PT", [("n", 21)]),
    ("DK", [("n", 14)]),
    ("SE", [("n", 20)]),
    ("NO", [("n", 11)]),
    ("FI", [("n", 14)]),
]
ORDER_FORMATS = ["NW-######", "NW-######", "#######", "########", "A-2026-0#####", "NW######", "R-#####"]
PRICES = [
    "12.90",
    "€1,299.00",
    "1.299,00 €",
    "$49.99",
    "EUR 249,-",
    "CHF 1'299.90",
    "£19.99",
    "19,95 €",
    "€ 2.499,00",
    "89 euros",
    "€12.90",
    "1,049.50 EUR",
    "7.95",
    "$1,999",
    "129,00€",
]
TIMES = ["14:30", "9.30am", "14h30", "10:00", "18.00 Uhr", "8 am", "12:15", "16h", "7:45 pm", "13.00"]
QUANTITIES = [
    "3 x 250 g",
    "2 pairs in size 42",
    "12 pcs",
    "500 ml",
    "1,5 kg",
    "4 boxes of 24",
    "a 2 m cable",
    "10 x 10 cm",
    "6 bottles",
    "1 of 3 items",
]
ADDRESSES = [
    "Hauptstraße 12, 10115 Berlin",
    "12 rue de Rivoli, 75001 Paris",
    "Damrak 1, 1012 LG Amsterdam",
    "Calle Mayor 5, 28013 Madrid",
    "221B Baker Street, London NW1 6XE",
    "Kastanienallee 123 10435 Berlin",
    "Prinsengracht 263 1016 GV Amsterdam",
    "Rue de Rivoli 120 75001 Paris",
    "Leopoldstraße 7, 80802 München",
    "Via Roma 15, 00184 Roma",
    "1600 Amphitheatre Pkwy, Mountain View, CA 94043",
    "Bahnhofstrasse 1, 8001 Zürich",
]
TRACKING_FORMATS = [
    "1Z999AA1########",
    "00340434############",
    "JJD000############",
    "RR#########DE",
    "3SABCD#######",
    "############",
    "9400 1000 #### #### #### ##",
    "CP#########FR",
    "LX#########NL",
]
VERSIONS = [
    "v2.13.0",
    "10.0.19045.3803",
    "17.4.1",
    "4.12.1234",
    "2026.11.3",
    "3.2",
    "1.0.0-beta.2",
    "5.14.2.1002",
    "8.1.0 (build 20261124)",
]
URLS = [
    "https://shop.example.com/orders/482913?ref=mail",
    "www.example.de/kontakt",
    "https://example.nl/account/settings#billing",
    "http://shop.example.fr/panier?id=20261124",
    "https://www.example.es/ayuda/devoluciones",
    "https://shop.example.com/p/wireless-headphones-2026",
    "example.com/help",
    "https://medium.com/@exampleshop/returns-2026",
]

POSITIVE = [
    "Hi, my email is {email}, can you send the invoice there?",
    "Please call me back on {phone}.",
    "You can reach me at {phone} or {email}.",
    "Order {order}: I paid with card {card} but it was charged twice.",
    "Refund to my IBAN {iban} please.",
    "My new number is {phone}, the old one doesn't work anymore.",
    "I changed my email to {email} - please update my account.",
    "This card was declined: {card}",
    "Can you refund {price} to {iban}? Order {order}.",
    "pls call {phone} asap, parcel {tracking} never arrived",
    "hello, ordered on {date}, contact {email}",
    "Use {card} for the subscription, expires 08/28.",
    "Send the return label to {email} and text me at {phone}.",
    "For the bank transfer: {iban} (account holder: Maria Lopez).",
    "my phone: {phone}\nmy email: {email}",
    "I tried {card} and {card} and neither worked.",
    "Wrong number on file! It's {phone}, not the one ending in 22.",
    "Is it safe to give you my card number {card}?",
    "Customer since {date}, email {email}, phone {phone}.",
    "Please debit {iban} for order {order} ({price}).",
    "Contact: {email}",
    "The courier should call {phone} between {time} and 18:00.",
    "{email} is my login but the password reset never arrives",
    "Can I pay by transfer? My IBAN: {iban}",
    "Card: {card}\nName: Jan de Vries",
    "I'm at {address}, phone {phone}.",
    "CC my colleague {email} on order {order} please.",
    "Could you send the paperwork to {email}? Thanks, Sophie",
    "The delivery driver tried {phone} but I was out.",
    "The {price} charge on {card} on {date} was not me.",
    "Hallo, bitte rufen Sie mich unter {phone} an.",
    "Meine E-Mail-Adresse lautet {email}.",
    "Bitte überweisen Sie die Erstattung auf {iban}.",
    "Bestellung {order}: Rückruf bitte unter {phone}, danke!",
    "Kontonummer (IBAN): {iban}, Inhaber Klaus Müller",
    "Ich habe mit der Karte {card} bezahlt, aber keine Bestätigung bekommen.",
    "Bonjour, mon numéro est le {phone}.",
    "Vous pouvez m'écrire à {email}.",
    "Remboursement sur mon IBAN {iban} svp, commande {order}.",
    "J'ai payé {price} avec la carte {card}.",
    "Mijn telefoonnummer is {phone}, bel gerust.",
    "Stuur de factuur naar {email} aub.",
    "Terugstorten op {iban} graag.",
    "Hola, mi teléfono es {phone}.",
    "Mi correo es {email}, gracias.",
    "Devolución a la cuenta {iban}, por favor.",
    "Pagué con la tarjeta {card} el {date}.",
    "Update my details: {phone} / {email}",
    "Two numbers: {phone} (home) and {phone} (mobile).",
    "IBAN {iban} BIC COBADEFFXXX",
    "card {card} exp 11/27",
    "I wrote to {email} and {email} but nobody answered.",
    "Hi! Order {order} ({qty}), contact me on {phone} if there's a problem.",
    "Refund ({price}) should go to {iban}, not to {card}.",
    "my number {phone}",
    "Text me: {phone}. Email: {email}. Thanks!",
    "Account {email}, version {version} of the app keeps crashing.",
    "{phone}",
    "{email}",
    "Card number is {card}, the security code I'll tell you on the phone.",
    "Anna Schmidt <{email}>",
    "Tel.:{phone}",
    "Reach me on WhatsApp ({phone}) or mail {email};",
    "IBAN:{iban}",
    "Kreditkarte:{card} (gültig bis 03/29)",
]
NEGATIVE = [
    "Where is my order {order}? I ordered it on {date}.",
    "The jacket costs {price} on the website but {price} in the app.",
    "Tracking number {tracking} shows no update since {date}.",
    "Can you deliver on {date} between {time} and 18:00?",
    "I want to return {qty} from order {order}.",
    "My card number {badcard} doesn't work, is it blocked?",
    "I transferred {price} to {badiban} but you say you didn't get it.",
    "Deliver to {address}, please.",
    "The app version {version} crashes on checkout.",
    "See {url} - the page shows the wrong price.",
    "Article number {ean}, do you have it in stock?",
    "My customer number is {customer}.",
    "Is the {price} offer still valid until {date}?",
    "Rechnung {order} vom {date} über {price}.",
    "Wo bleibt meine Bestellung {order}? Sendungsnummer {tracking}.",
    "Lieferung an {address} am {date}?",
    "Commande {order} du {date}, montant {price}.",
    "Le colis {tracking} est bloqué depuis le {date}.",
    "Bestelling {order} is nog niet binnen, track & trace {tracking}.",
    "Pedido {order} del {date}, {price}.",
    "I need {qty} by {date}, is that possible?",
    "Your site says delivery at {time} but nobody came.",
    "The IMEI of the phone I want to return is {imei}.",
    "Gift card code {giftcard} says invalid.",
    "What's your phone number? I can't find it on {url}.",
    "I tried {badcard} and it was rejected.",
    "Is {badiban} your bank account for transfers?",
    "The 20% discount wasn't applied, I paid {price} instead of {price}.",
    "Are you open at {time} on {date}?",
    "Order {order} weighs {qty} - shipping {price}?",
    "Firmware {version} on the speaker, still no bluetooth.",
    "The router at {ip} doesn't connect after the update to {version}.",
    "Paket {tracking} - Zustellung am {date} um {time}.",
    "hi, just checking if order {order} shipped",
    "I'd like to change my delivery date from {date} to {date}.",
    "Sizes {sizes} all sold out?",
    "Returned on {date}, refund of {price} still missing. Return number {order}.",
    "My last 4 digits are 4242 and the card expires 09/27.",
    "Can you call me? I'm available on {date} after {time}.",
    "Send it to {address} - not to the old address.",
    "ISBN {isbn} - is this the hardcover edition?",
    "Your bank details on {url} show an IBAN ending in 3000, is that right?",
    "Bon de commande {order}, {qty}, livraison le {date}.",
    "Ik heb {price} betaald op {date} om {time}.",
    "Referencia {order}, importe {price}, fecha {date}.",
    "Why is parcel {tracking} in Leipzig since {date}?",
    "Order {order} + order {order} - can you combine them?",
    "Bank transfer reference {order}, amount {price}, to {badiban}",
    "My card {badcard} expires {date}",
    "Is {ean} the same as {ean}?",
    "I wrote to you on Instagram, @anna.schmidt.design, about order {order}.",
]


def render(template: str, values: Values) -> dict[str, object]:
    text = ""
    spans: list[dict[str, object]] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        text += literal
        if field is None:
            continue
        generate: Callable[[], str] = getattr(values, field)
        value = generate()
        if field in PII_FIELDS:
            spans.append({"label": PII_FIELDS[field], "start": len(text), "end": len(text) + len(value)})
        text += value
    return {"text": text, "spans": spans}


def build() -> list[dict[str, object]]:
    rng = random.Random(SEED)
    values = Values(rng)
    records = [render(POSITIVE[i % len(POSITIVE)], values) for i in range(N_POSITIVE)]
    records += [render(NEGATIVE[i % len(NEGATIVE)], values) for i in range(N_NEGATIVE)]
    rng.shuffle(records)
    return records


def main() -> None:
    lines = [json.dumps(record, ensure_ascii=False) for record in build()]
    OUTPUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} records to {OUTPUT}")


if __name__ == "__main__":
    main()
