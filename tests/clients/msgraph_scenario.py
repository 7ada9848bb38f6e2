"""A working session with the Microsoft Graph SDK for Python through the gateway.

Usage: msgraph_scenario.py GRAPH_BASE SIMULATOR_URL TOKEN
GRAPH_BASE is the gateway's URL (the SDK adds /v1.0); SIMULATOR_URL is where mail from outside
is delivered (POST /_sim/deliver) while no client is connected. Prints one line per step; exits
non-zero on the first failure. Responses the simulator's store answered carry
x-sim-body-sha256, checked against the bytes received.
"""
import asyncio
import hashlib
import json
import sys
import urllib.request

import httpx
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.graph_request_adapter import options as graph_middleware_options
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.message import Message
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.users.item.messages.item.move.move_post_request_body import MovePostRequestBody
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody
from msgraph_core import GraphClientFactory
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem

checked = {"responses": 0}


async def check_digest(response: httpx.Response):
    expected = response.headers.get("x-sim-body-sha256")
    if expected:
        body = await response.aread()
        got = hashlib.sha256(body).hexdigest()
        if got != expected:
            raise SystemExit(f"response bytes differ from the simulator's: {got} != {expected}")
        checked["responses"] += 1


class StaticToken(AccessTokenProvider):
    def __init__(self, token):
        self.token = token

    async def get_authorization_token(self, uri, additional_authentication_context=None):
        return self.token

    def get_allowed_hosts_validator(self):
        return AllowedHostsValidator([])


def step(name, value=""):
    print(f"ok {name} {value}".rstrip(), flush=True)


def deliver(simulator, message):
    request = urllib.request.Request(
        f"{simulator}/_sim/deliver",
        data=json.dumps(message).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200, response.status


async def main():
    base, simulator, token = sys.argv[1:4]
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(event_hooks={"response": [check_digest]}, timeout=30),
        # The SDK's own options: /users/me-token-to-replace becomes /me on the way out.
        options=graph_middleware_options,
    )
    adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(StaticToken(token)), client=http)
    adapter.base_url = f"{base}/v1.0"
    client = GraphServiceClient(request_adapter=adapter)

    me = await client.me.get()
    assert me.mail == "alex.seller@contoso.example", me.mail
    step("me", me.mail)

    inbox = client.me.mail_folders.by_mail_folder_id("inbox")
    listed = await inbox.messages.get()
    subjects = [m.subject for m in listed.value]
    assert "Quote for 40 seats" in subjects, subjects
    step("list", len(subjects))

    # Delta: the first round reports every message, page by page, then hands a delta link.
    page = await inbox.messages.delta.get()
    first_round = list(page.value)
    while page.odata_next_link:
        page = await inbox.messages.delta.with_url(page.odata_next_link).get()
        first_round.extend(page.value)
    assert len(first_round) == len(subjects), (len(first_round), len(subjects))
    delta_link = page.odata_delta_link
    assert delta_link, "the last page carries a delta link"
    step("delta", len(first_round))

    # Mail arrives while no client is connected; the next delta round reports only it.
    deliver(
        simulator,
        {
            "from": "Pat Buyer <pat.buyer@fabrikam.example>",
            "to": ["alex.seller@contoso.example"],
            "subject": "Signed order form",
            "body": "Attached, signed.",
            "message_id": "<order.7@mail.fabrikam.example>",
        },
    )
    page = await inbox.messages.delta.with_url(delta_link).get()
    assert [m.subject for m in page.value] == ["Signed order form"], [m.subject for m in page.value]
    step("delta-new", page.value[0].internet_message_id)

    await client.me.send_mail.post(
        SendMailPostRequestBody(
            message=Message(
                subject="Order confirmed",
                body=ItemBody(content_type=BodyType.Text, content="Thank you for the order."),
                to_recipients=[Recipient(email_address=EmailAddress(address="pat.buyer@fabrikam.example"))],
            ),
            save_to_sent_items=True,
        )
    )
    sent = await client.me.mail_folders.by_mail_folder_id("sentitems").messages.get()
    assert "Order confirmed" in [m.subject for m in sent.value]
    step("send-mail")

    order = next(m for m in page.value if m.subject == "Signed order form")
    moved = await client.me.messages.by_message_id(order.id).move.post(
        MovePostRequestBody(destination_id="AAMkADEzTrackedFolderAAA=")
    )
    assert moved.parent_folder_id == "AAMkADEzTrackedFolderAAA=", moved.parent_folder_id
    fetched = await client.me.messages.by_message_id(moved.id).get()
    assert fetched.subject == "Signed order form"
    step("move", moved.id)

    # $batch: read a message, then set its category once the read succeeded.
    quote = next(m for m in listed.value if m.subject == "Quote for 40 seats")
    read = RequestInformation(Method.GET, f"{base}/v1.0/me/messages/{quote.id}")
    patch = RequestInformation(Method.PATCH, f"{base}/v1.0/me/messages/{quote.id}")
    patch.headers.add("Content-Type", "application/json")
    patch.content = json.dumps({"categories": ["Tracked to Dynamics 365"]}).encode()
    batch = BatchRequestContent()
    first = BatchRequestItem(read, id="1")
    second = BatchRequestItem(patch, id="2", depends_on=["1"])
    batch.add_request("1", first)
    batch.add_request("2", second)
    answer = await client.batch.post(batch)
    statuses = {k: v.status for k, v in answer.responses.items()}
    assert statuses == {"1": 200, "2": 200}, statuses
    again = await client.me.messages.by_message_id(quote.id).get()
    assert again.categories == ["Tracked to Dynamics 365"], again.categories
    step("batch", statuses)

    # A dependency that fails: the SDK writes the list as `depends_on`, and what depends on a
    # failed request is not run (424), so the category is not set.
    missing = RequestInformation(Method.GET, f"{base}/v1.0/me/messages/AAMkADEzNoSuchItemAAA=")
    patch = RequestInformation(Method.PATCH, f"{base}/v1.0/me/messages/{quote.id}")
    patch.headers.add("Content-Type", "application/json")
    patch.content = json.dumps({"categories": ["Never set"]}).encode()
    batch = BatchRequestContent()
    batch.add_request("1", BatchRequestItem(missing, id="1"))
    batch.add_request("2", BatchRequestItem(patch, id="2", depends_on=["1"]))
    answer = await client.batch.post(batch)
    statuses = {k: v.status for k, v in answer.responses.items()}
    # A malformed id is 400 (ErrorInvalidIdMalformed), an unknown one 404: either fails.
    assert 400 <= statuses["1"] < 500 and statuses["2"] == 424, statuses
    again = await client.me.messages.by_message_id(quote.id).get()
    assert again.categories == ["Tracked to Dynamics 365"], again.categories
    step("batch-failed-dependency", statuses)

    assert checked["responses"] >= 8, checked
    step("bytes", checked["responses"])


if __name__ == "__main__":
    asyncio.run(main())
