//! The pages as HTML: plain server-rendered forms that work without JavaScript (the script only
//! refreshes the preview as options change), labelled controls, no inline script or style (the
//! Content-Security-Policy forbids them), every value escaped.

use std::fmt::Write as _;

use uuid::Uuid;

use super::form::{CREATE_CHOICES, INCOMING_CHOICES, UserOptions};
use crate::common::text::xml_escape as esc;
use crate::exchange::InboxFolder;

/// What the page says about the organization's own settings.
#[derive(Debug, Clone)]
pub struct OrgFacts {
    pub no_email_offered: bool,
    pub sent_items_tracked: bool,
    pub category_tracking: bool,
    pub categories: Vec<String>,
    pub folder_tracking: bool,
    pub max_rules: usize,
    pub min_interval_minutes: u32,
    pub auto_create_allowed: bool,
}

/// One message of the preview: what happens to it now and with the change.
#[derive(Debug, Clone)]
pub struct PreviewRow {
    pub subject: String,
    pub counterpart: String,
    pub now: (bool, &'static str),
    pub then: (bool, &'static str),
}

/// Everything one options page shows.
pub struct PageView<'a> {
    pub address: &'a str,
    pub mailbox: Uuid,
    pub csrf: &'a str,
    /// Other mailboxes an admin may open.
    pub others: Vec<(Uuid, String)>,
    pub options: &'a UserOptions,
    pub org: &'a OrgFacts,
    /// Each sync filter's key (what the form names it by) and label.
    pub sync_filters: Vec<(String, String)>,
    pub folders: Result<Vec<InboxFolder>, String>,
    pub regarding: Vec<(String, String)>,
    pub error: Option<String>,
    pub notice: Option<String>,
    pub preview: Option<Vec<PreviewRow>>,
    /// `history_per_mailbox = 0`: nothing is kept to replay.
    pub history_off: bool,
}

pub fn layout(title: &str, body: &str) -> String {
    format!(
        concat!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<title>{title} · trackgate</title>",
            "<link rel=\"stylesheet\" href=\"/options/assets/page.css\">",
            "<script src=\"/options/assets/page.js\" defer></script>",
            "</head><body><main>{body}</main></body></html>\n"
        ),
        title = esc(title),
        body = body
    )
}

/// A page with a heading and one paragraph (refusals, errors).
pub fn message(title: &str, text: &str) -> String {
    layout(
        title,
        &format!("<h1>{}</h1><p>{}</p>", esc(title), esc(text)),
    )
}

/// Signed out, with the way back in.
pub fn signed_out() -> String {
    layout(
        "Signed out",
        "<h1>Signed out</h1><p><a href=\"/options\" id=\"sign-in-again\">Sign in again</a></p>",
    )
}

/// Signed in: on to `to` (a same-site navigation, so the session cookie goes with it).
pub fn moving_on(to: &str) -> String {
    format!(
        concat!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta http-equiv=\"refresh\" content=\"0;url={to}\"><title>Signed in · trackgate</title>",
            "</head><body><main><p>Signed in. <a href=\"{to}\" id=\"continue\">Continue to your options</a>.</p></main></body></html>\n"
        ),
        to = esc(to)
    )
}

/// The development sign-in: pick a user, no password.
pub fn signin(users: &[String], token: &str, error: Option<&str>) -> String {
    let mut body = String::from(
        "<h1>Sign in to your Personal Options</h1><p class=\"note\">Development sign-in: \
         the built-in simulator's users, no password. Production uses your organization's \
         sign-in (OpenID Connect).</p>",
    );
    if let Some(error) = error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(error));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/options/signin\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label for=\"user\">User</label> <select id=\"user\" name=\"user\">",
        esc(token)
    );
    for user in users {
        option(&mut body, user, user, false);
    }
    body.push_str("</select> <button type=\"submit\" id=\"signin\">Sign in</button></form>");
    layout("Sign in", &body)
}

/// One `<option>` of a `<select>`, escaped.
fn option(body: &mut String, value: &str, label: &str, selected: bool) {
    let _ = write!(
        body,
        "<option value=\"{}\"{}>{}</option>",
        esc(value),
        if selected { " selected" } else { "" },
        esc(label)
    );
}

fn checked(yes: bool) -> &'static str {
    if yes { " checked" } else { "" }
}

/// The options page.
pub fn options(view: &PageView<'_>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<header><h1>Personal Options</h1><p>for <strong id=\"who\">{}</strong></p>\
         <form method=\"post\" action=\"/options/signout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Sign out</button></form></header>",
        esc(view.address),
        esc(view.csrf)
    );
    if !view.others.is_empty() {
        body.push_str("<nav aria-label=\"Other users\"><h2>Open another user's options</h2><ul>");
        for (id, address) in &view.others {
            let _ = write!(
                body,
                "<li><a href=\"/options/{id}\">{}</a></li>",
                esc(address)
            );
        }
        body.push_str("</ul></nav>");
    }
    if let Some(error) = &view.error {
        let _ = write!(
            body,
            "<p class=\"error\" role=\"alert\" id=\"error\">{}</p>",
            esc(error)
        );
    }
    if let Some(notice) = &view.notice {
        let _ = write!(
            body,
            "<p class=\"notice\" role=\"status\" id=\"notice\">{}</p>",
            esc(notice)
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/options/{}\" id=\"options\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        view.mailbox,
        esc(view.csrf)
    );
    email_section(&mut body, view);
    folder_section(&mut body, view);
    sync_section(&mut body, view);
    privacy_section(&mut body, view);
    body.push_str(
        "<p class=\"actions\"><button type=\"submit\" name=\"action\" value=\"preview\" id=\"preview-button\">Preview</button> \
         <button type=\"submit\" name=\"action\" value=\"save\" id=\"save\">Save</button></p></form>",
    );
    preview(&mut body, view.preview.as_deref(), view.history_off);
    layout("Personal Options", &body)
}

fn email_section(body: &mut String, view: &PageView<'_>) {
    let o = view.options;
    body.push_str("<fieldset><legend>Email</legend><p><label for=\"incoming\">Select the email messages to track in Dynamics 365</label><br><select id=\"incoming\" name=\"incoming\">");
    for (value, label) in INCOMING_CHOICES {
        if value == 4 && !view.org.no_email_offered && o.incoming != 4 {
            continue;
        }
        option(body, &value.to_string(), label, o.incoming == value);
    }
    body.push_str("</select></p>");
    let _ = write!(
        body,
        "<p class=\"note\">Sent items: {}</p>",
        if view.org.sent_items_tracked {
            "your organization tracks mail you send by the same option."
        } else {
            "your organization does not track mail you send automatically (only replies that correlate, folders and the tracking category)."
        }
    );
    let categories = view.org.categories.join(", ");
    let _ = write!(
        body,
        "<p class=\"note\">Tracking category: {}</p>",
        if view.org.category_tracking {
            format!(
                "set <em>{}</em> on a message in Outlook to track it.",
                esc(&categories)
            )
        } else {
            "turned off by your organization.".into()
        }
    );
    body.push_str("<p><label for=\"autocreate\">Automatically create records in Dynamics 365 for unknown senders of tracked email</label><br><select id=\"autocreate\" name=\"autocreate\">");
    for (value, label) in CREATE_CHOICES {
        option(body, &value.to_string(), label, o.autocreate == value);
    }
    body.push_str("</select></p>");
    if !view.org.auto_create_allowed {
        body.push_str("<p class=\"note\">Your organization has turned automatic creation off; this option has no effect.</p>");
    }
    let _ = write!(
        body,
        "<p><input type=\"checkbox\" id=\"allowcrmsendemail\" name=\"allowcrmsendemail\"{}> \
         <label for=\"allowcrmsendemail\">Allow Dynamics 365 to send email using your mailbox</label></p></fieldset>",
        checked(o.allowcrmsendemail)
    );
}

fn folder_section(body: &mut String, view: &PageView<'_>) {
    body.push_str("<fieldset><legend>Folder tracking rules</legend>");
    if !view.org.folder_tracking {
        body.push_str("<p class=\"note\">Folder-level tracking is turned off for your organization.</p></fieldset>");
        return;
    }
    body.push_str("<p class=\"note\">Mail in a folder under your Inbox is tracked, and linked to the record you choose, whatever the option above says.</p>");
    if let Err(reason) = &view.folders {
        let _ = write!(
            body,
            "<p class=\"error\">Your folders cannot be listed now ({}); existing rules are kept.</p>",
            esc(reason)
        );
    }
    body.push_str("<table id=\"rules\"><thead><tr><th scope=\"col\">Folder</th><th scope=\"col\">Regarding</th></tr></thead><tbody>");
    let rules = &view.options.rules;
    for (i, rule) in rules.iter().enumerate() {
        rule_row(body, view, i, Some(rule));
    }
    let full = rules.len() >= view.org.max_rules;
    if !full {
        rule_row(body, view, rules.len(), None);
    }
    body.push_str("</tbody></table>");
    if full {
        let _ = write!(
            body,
            "<p class=\"note\" id=\"rule-limit\">You have {} folder tracking rules, the most your organization allows ({}). Remove one (choose “no rule”) to add another.</p>",
            rules.len(),
            view.org.max_rules
        );
    }
    body.push_str("</fieldset>");
}

fn rule_row(
    body: &mut String,
    view: &PageView<'_>,
    i: usize,
    rule: Option<&super::form::RuleChoice>,
) {
    let current = rule.map(|r| r.folder_id.as_str()).unwrap_or_default();
    let _ = write!(
        body,
        "<tr><td><label class=\"hidden\" for=\"rule_folder_{i}\">Folder {n}</label><select id=\"rule_folder_{i}\" name=\"rule_folder\"><option value=\"\">{none}</option>",
        n = i + 1,
        none = if rule.is_some() {
            "no rule (remove)"
        } else {
            "add a rule…"
        }
    );
    let mut listed = false;
    for folder in view.folders.as_deref().unwrap_or_default() {
        listed |= folder.id == current;
        let label = format!(
            "{}{}",
            "— ".repeat(folder.depth.saturating_sub(1)),
            folder.name
        );
        option(body, &folder.id, &label, folder.id == current);
    }
    if let Some(rule) = rule
        && !listed
    {
        let name = rule
            .folder_name
            .as_deref()
            .unwrap_or("(a folder not listed)");
        option(body, &rule.folder_id, name, true);
    }
    let regarding = rule
        .and_then(|r| r.regarding.as_ref())
        .map(|l| format!("{}:{}", l.entity, l.id))
        .unwrap_or_default();
    let _ = write!(
        body,
        "</select></td><td><label class=\"hidden\" for=\"rule_regarding_{i}\">Regarding record {n}</label><select id=\"rule_regarding_{i}\" name=\"rule_regarding\"><option value=\"\">none</option>",
        n = i + 1
    );
    let mut offered = regarding.is_empty();
    for (label, value) in &view.regarding {
        offered |= *value == regarding;
        option(body, value, label, *value == regarding);
    }
    if !offered {
        option(body, &regarding, &regarding, true);
    }
    body.push_str("</select></td></tr>");
}

fn sync_section(body: &mut String, view: &PageView<'_>) {
    let o = view.options;
    body.push_str("<fieldset><legend>Synchronization</legend>");
    if view.sync_filters.is_empty() {
        body.push_str("<p class=\"note\">No synchronization filters of your own: the organization's default filters apply.</p>");
    } else {
        body.push_str("<p>Your synchronization filters — which records go to Outlook (their conditions are edited in Dynamics 365):</p><ul class=\"filters\">");
        for (i, (key, label)) in view.sync_filters.iter().enumerate() {
            let on = o.filters.get(i).copied().unwrap_or(true);
            let _ = write!(
                body,
                "<li><input type=\"hidden\" name=\"syncfilter_shown\" value=\"{key}\">\
                 <input type=\"checkbox\" id=\"syncfilter_{i}\" name=\"syncfilter\" value=\"{key}\"{}> \
                 <label for=\"syncfilter_{i}\">{}</label></li>",
                checked(on),
                esc(label),
                key = esc(key)
            );
        }
        body.push_str("</ul>");
    }
    let min = view.org.min_interval_minutes.max(1);
    let _ = write!(
        body,
        "<p><label for=\"outlooksyncinterval\">Synchronize every (minutes)</label> \
         <input type=\"number\" id=\"outlooksyncinterval\" name=\"outlooksyncinterval\" min=\"{min}\" max=\"1440\" value=\"{}\" aria-describedby=\"interval-note\"> \
         <span class=\"note\" id=\"interval-note\">Your organization's minimum is {min} minute{plural}; empty: the default.</span></p>",
        o.outlooksyncinterval
            .map(|m| m.to_string())
            .unwrap_or_default(),
        plural = if min == 1 { "" } else { "s" }
    );
    let _ = write!(
        body,
        "<p><input type=\"checkbox\" id=\"synccontactcompany\" name=\"synccontactcompany\"{}> \
         <label for=\"synccontactcompany\">Update the Company field of synchronized contacts with the parent account name</label></p></fieldset>",
        checked(o.synccontactcompany)
    );
}

fn privacy_section(body: &mut String, view: &PageView<'_>) {
    let _ = write!(
        body,
        "<fieldset><legend>Privacy</legend><p><a href=\"/options/{}/privacy\">What leaves your mailbox for Dynamics 365</a></p>\
         <p><label for=\"exclusions\">Never track email with these senders or domains (one per line)</label><br>\
         <textarea id=\"exclusions\" name=\"exclusions\" rows=\"4\" cols=\"50\">{}</textarea></p></fieldset>",
        view.mailbox,
        esc(&view.options.exclusions.join("\n"))
    );
}

fn verdict(track: bool, reason: &str) -> String {
    format!(
        "<span class=\"{}\">{}</span> <code>{}</code>",
        if track { "track" } else { "ignore" },
        if track { "tracked" } else { "not tracked" },
        esc(reason)
    )
}

fn preview(body: &mut String, rows: Option<&[PreviewRow]>, history_off: bool) {
    body.push_str("<section id=\"preview\" aria-live=\"polite\"><h2>Preview</h2>");
    let Some(rows) = rows else {
        body.push_str("<p class=\"note\">Change an option and press Preview to see what your recent mail would become.</p></section>");
        return;
    };
    if rows.is_empty() {
        body.push_str(if history_off {
            "<p class=\"note\">This gateway keeps no recent mail to replay ([options] history_per_mailbox = 0).</p></section>"
        } else {
            "<p class=\"note\">No recent mail of this mailbox has passed the gateway yet.</p></section>"
        });
        return;
    }
    let now = rows.iter().filter(|r| r.now.0).count();
    let then = rows.iter().filter(|r| r.then.0).count();
    let _ = write!(
        body,
        "<p id=\"preview-summary\">Of your last {} messages, <strong id=\"tracked-now\">{now}</strong> are tracked now and <strong id=\"tracked-then\">{then}</strong> would be with these options.</p>\
         <table><thead><tr><th scope=\"col\">Message</th><th scope=\"col\">With</th><th scope=\"col\">Now</th><th scope=\"col\">With these options</th></tr></thead><tbody>",
        rows.len()
    );
    for row in rows {
        let changed = row.now != row.then;
        let _ = write!(
            body,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if changed { " class=\"changed\"" } else { "" },
            esc(&row.subject),
            esc(&row.counterpart),
            verdict(row.now.0, row.now.1),
            verdict(row.then.0, row.then.1)
        );
    }
    body.push_str("</tbody></table></section>");
}

/// What leaves the mailbox for the CRM, for one user under this configuration.
pub struct PrivacyFacts {
    pub body: &'static str,
    pub columns: Vec<&'static str>,
    /// Messages per mailbox whose headers the gateway keeps for this page's previews.
    pub kept_for_previews: usize,
}

pub fn privacy(
    address: &str,
    mailbox: Uuid,
    facts: &PrivacyFacts,
    options: &UserOptions,
) -> String {
    let mut body = format!(
        "<h1>What leaves your mailbox</h1><p>for <strong>{}</strong> · <a href=\"/options/{mailbox}\">back to your options</a></p>",
        esc(address)
    );
    body.push_str("<h2>For each message that is tracked</h2><ul>");
    for column in &facts.columns {
        let _ = write!(body, "<li>{}</li>", esc(column));
    }
    let _ = write!(
        body,
        "<li>The body: {}</li><li>Attachments: never.</li><li>Other headers: never.</li></ul>",
        esc(facts.body)
    );
    body.push_str(
        "<h2>What is never sent</h2><ul><li>Mail that none of the rules track: it never leaves \
         the gateway for the CRM.</li><li>Your password or tokens.</li></ul>",
    );
    if facts.kept_for_previews > 0 {
        let _ = write!(
            body,
            "<h2>What the gateway keeps</h2><p>For the previews on your options page, the gateway \
             keeps what it saw of your last {} messages — subject, sender and recipients, folder, \
             categories; never a body — in its own memory and store, on the gateway only.</p>",
            facts.kept_for_previews
        );
    }
    body.push_str("<h2>Your exclusions</h2>");
    if options.exclusions.is_empty() {
        body.push_str("<p>None. You can add senders or domains that are never tracked on your options page.</p>");
    } else {
        body.push_str("<p>Mail with any of these is never tracked automatically or by a folder rule (setting the tracking category on a message still tracks it):</p><ul>");
        for e in &options.exclusions {
            let _ = write!(body, "<li>{}</li>", esc(e));
        }
        body.push_str("</ul>");
    }
    layout("Privacy", &body)
}

pub const CSS: &str = include_str!("page.css");
pub const JS: &str = include_str!("page.js");
