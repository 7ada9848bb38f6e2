"""A working session with exchangelib through the gateway, as a sales user's tools have it.

Usage: exchangelib_scenario.py EWS_URL AUTH USER PASSWORD MAILBOX
AUTH is ntlm or basic. Prints one line per step; exits non-zero on the first failure. Every
response the simulator answered from its store carries x-sim-body-sha256, and each is checked
against the bytes received, so a gateway that changed a byte fails the scenario.
"""
import hashlib
import sys

import requests
from exchangelib import BASIC, DELEGATE, NTLM, Account, Configuration, Credentials, Mailbox, Message

checked = {"responses": 0}
_send = requests.adapters.HTTPAdapter.send


def send_and_check(self, request, *args, **kwargs):
    response = _send(self, request, *args, **kwargs)
    expected = response.headers.get("x-sim-body-sha256")
    if expected and not kwargs.get("stream"):
        got = hashlib.sha256(response.content).hexdigest()
        if got != expected:
            raise SystemExit(f"response bytes differ from the simulator's: {got} != {expected}")
        checked["responses"] += 1
    return response


requests.adapters.HTTPAdapter.send = send_and_check


def step(name, value=""):
    print(f"ok {name} {value}".rstrip(), flush=True)


def main():
    url, auth, user, password, address = sys.argv[1:6]
    config = Configuration(
        service_endpoint=url,
        credentials=Credentials(user, password),
        auth_type={"ntlm": NTLM, "basic": BASIC}[auth],
    )
    account = Account(address, config=config, autodiscover=False, access_type=DELEGATE)
    step("version", account.version.api_version)

    inbox = account.inbox
    subjects = [m.subject for m in inbox.all().order_by("-datetime_received")]
    assert "Quote for 40 seats" in subjects, subjects
    step("list", len(subjects))
    quote = inbox.get(subject="Quote for 40 seats")
    assert quote.sender.email_address == "pat.buyer@fabrikam.example", quote.sender
    assert quote.message_id == "<CAF1234.5678@mail.fabrikam.example>", quote.message_id
    step("read", quote.message_id)

    changes = list(inbox.sync_items())
    assert len(changes) == len(subjects), (len(changes), len(subjects))
    assert list(inbox.sync_items()) == [], "a second sync with the state reports nothing"
    step("sync", len(changes))

    Message(
        account=account,
        folder=account.sent,
        subject="Proposal for Fabrikam",
        body="The proposal for 40 seats.",
        to_recipients=[Mailbox(email_address="pat.buyer@fabrikam.example")],
    ).send_and_save()
    assert account.sent.filter(subject="Proposal for Fabrikam").count() == 1
    step("send")

    draft = Message(
        account=account,
        folder=account.drafts,
        subject="Follow-up for Pat",
        body="Checking in.",
        to_recipients=["pat.buyer@fabrikam.example"],
    )
    draft.save()
    assert account.drafts.filter(subject="Follow-up for Pat").count() == 1
    draft.send()
    assert account.drafts.filter(subject="Follow-up for Pat").count() == 0
    assert account.sent.filter(subject="Follow-up for Pat").count() == 1
    step("draft-send")

    tracked = inbox / "Fabrikam deal"
    quote.move(tracked)
    assert [m.subject for m in tracked.all()] == ["Quote for 40 seats"]
    step("move", tracked.id)

    renewal = inbox.get(subject="RE: Renewal [CRM:0271001]")
    renewal.categories = ["Tracked to Dynamics 365"]
    renewal.save(update_fields=["categories"])
    assert inbox.get(subject="RE: Renewal [CRM:0271001]").categories == ["Tracked to Dynamics 365"]
    step("categorize")

    pricing = inbox.get(subject="Re: Pricing")
    pricing.copy(inbox / "Newsletters")
    assert (inbox / "Newsletters").filter(subject="Re: Pricing").count() == 1
    pricing.move_to_trash()
    assert account.trash.filter(subject="Re: Pricing").count() == 1
    step("copy-delete")

    # An id of the right form whose item never existed, and one that is no id at all.
    missing = list(account.fetch(ids=[("AAAAAFRHAgAAAAAAAAD/////", None), ("DUMMY", None)]))
    assert [type(m).__name__ for m in missing] == ["ErrorItemNotFound", "ErrorInvalidIdMalformed"], missing
    step("unknown-id", type(missing[0]).__name__)
    assert checked["responses"] > 10, checked
    step("bytes", checked["responses"])


if __name__ == "__main__":
    main()
