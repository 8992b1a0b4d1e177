//! The page's HTML, rendered on the server: no script at all, one style
//! sheet (`/assets/page.css`), every input with its label, one column that
//! reads on a phone.
//!
//! Everything that comes from data (names, addresses, ids) goes through
//! [`escape`]; nothing else is interpolated.

use std::fmt::Write as _;

use super::text::{self, Text};
use crate::{
    app::Preferences,
    engine::{Channel, ConsentStatus, Regime, SubscriptionStatus, channel_ticked},
};

/// The style sheet, served at `/assets/page.css`.
pub(crate) const STYLE: &str = r#"*,*::before,*::after{box-sizing:border-box}
html{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;font-size:112.5%;line-height:1.5;color:#1a1a1a;background:#fff}
body{margin:0 auto;max-width:40rem;padding:1rem 1.25rem 3rem}
h1{font-size:1.6rem;line-height:1.25;margin:1rem 0 .5rem}
p{margin:.5rem 0 1rem}
fieldset{border:1px solid #767676;border-radius:.5rem;margin:1.25rem 0;padding:.75rem 1rem}
legend{font-weight:700;padding:0 .25rem}
.choice{display:flex;gap:.75rem;align-items:flex-start;padding:.5rem 0}
.choice+.choice{border-top:1px solid #d0d0d0}
.choice input{width:1.5rem;height:1.5rem;margin:.1rem 0 0;flex:none;accent-color:#0b57d0}
.choice label{font-weight:600}
.state{display:block;font-weight:400;color:#3d3d3d;font-size:.9rem}
.everything{border-color:#a8071a}
button{font:inherit;font-weight:700;color:#fff;background:#0b57d0;border:0;border-radius:.5rem;padding:.75rem 1.5rem;min-height:3rem;cursor:pointer;width:100%}
button:hover{background:#0842a0}
:focus-visible{outline:3px solid #a8071a;outline-offset:2px}
a{color:#0b57d0}
.notice{font-size:.9rem;color:#3d3d3d}
.message{border-left:.35rem solid #0b57d0;padding:.5rem 1rem;background:#f0f4fa}
nav ul{list-style:none;display:flex;gap:1rem;padding:0;margin:0}
footer{margin-top:2rem;font-size:.9rem}
"#;

/// Escapes text for HTML content and double-quoted attributes.
pub(crate) fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The frame around a page's content.
fn frame(text: &Text, title: &str, body: &str, languages: Option<&str>) -> String {
    let nav = languages.map_or_else(String::new, |path| {
        let mut nav = format!("<nav aria-label=\"{}\"><ul>", escape(text.languages));
        for other in text::ALL {
            let name = match other.code {
                "sv" => "Svenska",
                "nl" => "Nederlands",
                _ => "English",
            };
            if other.code == text.code {
                let _ = write!(
                    nav,
                    "<li><strong aria-current=\"page\">{name}</strong></li>"
                );
            } else {
                let _ = write!(
                    nav,
                    "<li><a href=\"{}?lang={}\" lang=\"{}\" hreflang=\"{}\">{name}</a></li>",
                    escape(path),
                    other.code,
                    other.code,
                    other.code
                );
            }
        }
        nav.push_str("</ul></nav>");
        nav
    });
    format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title}</title>\n<link rel=\"stylesheet\" href=\"/assets/page.css\">\n</head>\n\
         <body>\n{nav}\n<main>\n{body}\n</main>\n</body>\n</html>\n",
        lang = text.code,
        title = escape(title),
    )
}

fn status_line(text: &Text, status: ConsentStatus, regime: Regime) -> &'static str {
    match (status, regime) {
        (ConsentStatus::OptedIn, _) => text.opted_in,
        (ConsentStatus::OptedOut, _) => text.opted_out,
        (ConsentStatus::NoPreference, Regime::OptOut) => text.no_preference_contacted,
        (ConsentStatus::NoPreference, Regime::OptIn) => text.no_preference_opt_in,
    }
}

/// The preference page: the person's state and the form that changes it.
/// `path` is the page's own path (the form posts back to it).
pub(crate) fn preferences(
    text: &Text,
    path: &str,
    prefs: &Preferences,
    csrf: &str,
    message: Option<&str>,
) -> String {
    let settings = &prefs.settings;
    let consent = &prefs.profile.consent;
    let mut body = String::with_capacity(4096);
    let _ = writeln!(body, "<h1>{}</h1>", escape(text.title));
    if let Some(message) = message {
        let _ = writeln!(
            body,
            "<p class=\"message\" role=\"status\">{}</p>",
            escape(message)
        );
    }
    if settings.display_name.is_empty() {
        let _ = writeln!(body, "<p>{}</p>", escape(text.intro));
    } else {
        let _ = writeln!(
            body,
            "<p>{} <strong>{}</strong>.</p>",
            escape(text.intro_from),
            escape(&settings.display_name)
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{}\">\n\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
         <input type=\"hidden\" name=\"lang\" value=\"{}\">\n",
        escape(path),
        escape(csrf),
        text.code
    );
    let _ = write!(
        body,
        "<fieldset>\n<legend>{}</legend>\n",
        escape(text.channels)
    );
    for channel in Channel::ALL {
        let field = channel.short_name();
        let ticked = channel_ticked(consent, settings, channel);
        let _ = writeln!(
            body,
            "<div class=\"choice\"><input type=\"checkbox\" id=\"ch-{field}\" name=\"ch\" value=\"{field}\" \
             aria-describedby=\"ch-{field}-state\"{}>\
             <label for=\"ch-{field}\">{}<span class=\"state\" id=\"ch-{field}-state\">{}</span></label></div>",
            if ticked { " checked" } else { "" },
            escape(text.channel(channel)),
            escape(status_line(
                text,
                consent.channel(channel).status,
                settings.regime(channel)
            )),
        );
    }
    body.push_str("</fieldset>\n");
    if !prefs.services.is_empty() {
        let _ = write!(
            body,
            "<fieldset>\n<legend>{}</legend>\n",
            escape(text.subscriptions)
        );
    }
    for (i, (service, subscription)) in prefs.services.iter().enumerate() {
        let subscription = subscription.as_ref();
        let state = match subscription.map(|s| s.status) {
            Some(SubscriptionStatus::Active) => text.subscribed,
            Some(SubscriptionStatus::PendingConfirmation) => text.pending,
            Some(SubscriptionStatus::Unsubscribed) | None if service.double_opt_in => {
                text.confirm_to_subscribe
            }
            Some(SubscriptionStatus::Unsubscribed) => text.unsubscribed,
            None => text.not_subscribed,
        };
        if crate::engine::service_has_box(service, subscription) {
            let _ = writeln!(
                body,
                "<div class=\"choice\"><input type=\"checkbox\" id=\"svc-{i}\" name=\"svc\" value=\"{}\" \
                 aria-describedby=\"svc-{i}-state\"{}>\
                 <label for=\"svc-{i}\">{}<span class=\"state\" id=\"svc-{i}-state\">{}</span></label></div>",
                escape(service.id.as_str()),
                if crate::engine::service_ticked(subscription) {
                    " checked"
                } else {
                    ""
                },
                escape(&service.name),
                escape(state),
            );
        } else {
            let _ = writeln!(
                body,
                "<div class=\"choice\"><span>{}<span class=\"state\">{}</span></span></div>",
                escape(&service.name),
                escape(state),
            );
        }
    }
    if !prefs.services.is_empty() {
        body.push_str("</fieldset>\n");
    }
    let _ = write!(
        body,
        "<fieldset class=\"everything\">\n<legend>{}</legend>\n\
         <div class=\"choice\"><input type=\"checkbox\" id=\"everything\" name=\"everything\" value=\"on\" \
         aria-describedby=\"everything-hint\"{}>\
         <label for=\"everything\">{}<span class=\"state\" id=\"everything-hint\">{}</span></label></div>\n\
         </fieldset>\n",
        escape(text.everything),
        if consent.opted_out_all() {
            " checked"
        } else {
            ""
        },
        escape(text.everything),
        escape(text.everything_hint),
    );
    let _ = write!(
        body,
        "<p class=\"notice\">{}</p>\n<button type=\"submit\">{}</button>\n</form>\n",
        escape(text.proof_notice),
        escape(text.save)
    );
    footer(&mut body, text, &settings.privacy_policy_url);
    frame(text, text.title, &body, Some(path))
}

fn footer(body: &mut String, text: &Text, privacy_policy_url: &str) {
    if !privacy_policy_url.is_empty() {
        let _ = writeln!(
            body,
            "<footer><a href=\"{}\" rel=\"noopener noreferrer\">{}</a></footer>",
            escape(privacy_policy_url),
            escape(text.privacy)
        );
    }
}

/// The page after a saved form.
pub(crate) fn saved(text: &Text, path: &str, changed: bool, privacy_policy_url: &str) -> String {
    let mut body = format!(
        "<h1>{}</h1>\n<p class=\"message\" role=\"status\">{}</p>\n<p><a href=\"{}?lang={}\">{}</a></p>\n",
        escape(text.saved_title),
        escape(if changed { text.saved } else { text.unchanged }),
        escape(path),
        text.code,
        escape(text.back),
    );
    footer(&mut body, text, privacy_policy_url);
    frame(text, text.saved_title, &body, None)
}

/// The one page for every link that does not open: forged, cut short,
/// expired, of another tenant, or of a profile that is gone. It says
/// nothing about which.
pub(crate) fn invalid(text: &Text) -> String {
    let body = format!(
        "<h1>{}</h1>\n<p>{}</p>\n",
        escape(text.invalid_title),
        escape(text.invalid)
    );
    frame(text, text.invalid_title, &body, None)
}

/// A short page with a title and one message.
pub(crate) fn message(text: &Text, title: &str, message: &str) -> String {
    let body = format!("<h1>{}</h1>\n<p>{}</p>\n", escape(title), escape(message));
    frame(text, title, &body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape(r#"<a href="x" onclick='y'>&"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;"
        );
        assert_eq!(escape("Åsa & Co"), "Åsa &amp; Co");
    }

    #[test]
    fn the_invalid_page_is_the_same_for_every_cause_and_has_no_script() {
        let page = invalid(text::text("sv").expect("sv"));
        assert!(page.contains("<html lang=\"sv\">"));
        assert!(page.contains("Länken fungerar inte"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("style="));
    }
}
