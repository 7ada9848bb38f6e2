// A working session with ews-javascript-api (and @ewsjs/xhr) through the gateway.
//
// Usage: node ewsjs_scenario.js EWS_URL AUTH USER PASSWORD
// AUTH is ntlm or basic. Prints one line per step; exits non-zero on the first failure.
// Responses the simulator's store answered carry x-sim-body-sha256, checked against the bytes
// received.
"use strict";
const crypto = require("crypto");
const ews = require("ews-javascript-api");
const { XhrApi } = require("@ewsjs/xhr");

const [url, auth, user, password] = process.argv.slice(2);
let checked = 0;

function step(name, value) {
  console.log(`ok ${name}${value === undefined ? "" : " " + value}`);
}

function assert(condition, message) {
  if (!condition) {
    console.error(`failed: ${message}`);
    process.exit(1);
  }
}

function client() {
  const xhr = new XhrApi({ rejectUnauthorized: false, gzip: false });
  if (auth === "ntlm") {
    xhr.useNtlmAuthentication(user, password);
  }
  const send = xhr.xhr.bind(xhr);
  xhr.xhr = async (options, progress) => {
    const response = await send(options, progress);
    const expected = response.getResponseHeader("x-sim-body-sha256");
    if (expected) {
      const got = crypto.createHash("sha256").update(response.responseText, "utf8").digest("hex");
      assert(got === expected, `response bytes differ from the simulator's: ${got} != ${expected}`);
      checked += 1;
    }
    return response;
  };
  ews.ConfigurationApi.ConfigureXHR(xhr);
  const service = new ews.ExchangeService(ews.ExchangeVersion.Exchange2013_SP1);
  service.Credentials = new ews.WebCredentials(user, password);
  service.Url = new ews.Uri(url);
  return service;
}

async function subjects(service, folder) {
  const found = await service.FindItems(folder, new ews.ItemView(50));
  return found.Items.map((i) => i.Subject);
}

async function main() {
  const service = client();
  const inbox = new ews.FolderId(ews.WellKnownFolderName.Inbox);
  const listed = await service.FindItems(inbox, new ews.ItemView(50));
  const names = listed.Items.map((i) => i.Subject);
  assert(names.includes("Quote for 40 seats"), `inbox: ${names}`);
  step("list", names.length);

  const quote = listed.Items.find((i) => i.Subject === "Quote for 40 seats");
  const read = await ews.EmailMessage.Bind(
    service,
    quote.Id,
    new ews.PropertySet(ews.BasePropertySet.FirstClassProperties)
  );
  assert(read.From.Address === "pat.buyer@fabrikam.example", `from ${read.From.Address}`);
  assert(read.InternetMessageId === "<CAF1234.5678@mail.fabrikam.example>", read.InternetMessageId);
  step("read", read.InternetMessageId);

  const sync = await service.SyncFolderItems(
    inbox,
    ews.PropertySet.IdOnly,
    null,
    100,
    ews.SyncFolderItemsScope.NormalItems,
    null
  );
  assert(sync.Count === names.length, `sync ${sync.Count}`);
  const again = await service.SyncFolderItems(
    inbox,
    ews.PropertySet.IdOnly,
    null,
    100,
    ews.SyncFolderItemsScope.NormalItems,
    sync.SyncState
  );
  assert(again.Count === 0, `second sync ${again.Count}`);
  step("sync", sync.Count);

  const proposal = new ews.EmailMessage(service);
  proposal.Subject = "Licences for Fabrikam";
  proposal.Body = new ews.MessageBody(ews.BodyType.Text, "The licence terms.");
  proposal.ToRecipients.Add("pat.buyer@fabrikam.example");
  await proposal.SendAndSaveCopy();
  const sent = new ews.FolderId(ews.WellKnownFolderName.SentItems);
  assert((await subjects(service, sent)).includes("Licences for Fabrikam"), "not in Sent Items");
  step("send");

  const draft = new ews.EmailMessage(service);
  draft.Subject = "Agenda for Pat";
  draft.Body = new ews.MessageBody(ews.BodyType.Text, "Agenda attached.");
  draft.ToRecipients.Add("pat.buyer@fabrikam.example");
  await draft.Save(ews.WellKnownFolderName.Drafts);
  const drafts = new ews.FolderId(ews.WellKnownFolderName.Drafts);
  assert((await subjects(service, drafts)).includes("Agenda for Pat"), "draft not saved");
  await draft.SendAndSaveCopy();
  assert(!(await subjects(service, drafts)).includes("Agenda for Pat"), "draft still there");
  assert((await subjects(service, sent)).includes("Agenda for Pat"), "draft not sent");
  step("draft-send");

  const tracked = new ews.FolderId("AAMkADEzTrackedFolderAAA=");
  await read.Move(tracked);
  assert((await subjects(service, tracked)).includes("Quote for 40 seats"), "not moved");
  step("move");

  const renewal = listed.Items.find((i) => i.Subject === "RE: Renewal [CRM:0271001]");
  const renewalItem = await ews.EmailMessage.Bind(service, renewal.Id);
  renewalItem.Categories = new ews.StringList(["Tracked to Dynamics 365"]);
  await renewalItem.Update(ews.ConflictResolutionMode.AutoResolve);
  const categorized = await ews.EmailMessage.Bind(service, renewal.Id);
  assert(categorized.Categories._getItem(0) === "Tracked to Dynamics 365", "no category");
  step("categorize");

  const pricing = listed.Items.find((i) => i.Subject === "Re: Pricing");
  const pricingItem = await ews.EmailMessage.Bind(service, pricing.Id);
  const folders = await service.FindFolders(ews.WellKnownFolderName.Inbox, new ews.FolderView(10));
  const newsletters = folders.Folders.find((f) => f.DisplayName === "Newsletters");
  assert(newsletters, `folders under the Inbox: ${folders.Folders.map((f) => f.DisplayName)}`);
  await pricingItem.Copy(newsletters.Id);
  await pricingItem.Delete(ews.DeleteMode.MoveToDeletedItems);
  const trash = new ews.FolderId(ews.WellKnownFolderName.DeletedItems);
  assert((await subjects(service, trash)).includes("Re: Pricing"), "not deleted");
  assert((await subjects(service, newsletters.Id)).includes("Re: Pricing"), "not copied");
  step("copy-delete");

  assert(checked > 10, `checked ${checked}`);
  step("bytes", checked);
}

main().catch((e) => {
  console.error("failed:", e && (e.stack || e.message || e));
  process.exit(1);
});
