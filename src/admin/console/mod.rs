//! The web console (the contract's section 7): a page on the admin listener
//! at `/` that drives the admin API from the browser.
//!
//! Its four files are plain HTML, CSS, JavaScript and SVG written by hand,
//! compiled into the binary with `include_str!`: nothing is fetched from
//! elsewhere at run time and building keygate needs no Node toolchain. The
//! page holds no secret of its own and needs no token to load; every call it
//! makes is an ordinary admin API call with the bearer token the user signs
//! in with (kept in the tab's `sessionStorage`, never in a URL).
//!
//! Every console answer carries a strict Content-Security-Policy (only these
//! files may run, style or be fetched; no inline script or style, no
//! framing, no form posts), `X-Frame-Options: DENY` and
//! `X-Content-Type-Options: nosniff`.

use axum::body::Body;
use axum::response::Response;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};

/// The page.
const INDEX: &str = include_str!("index.html");
/// Everything the page does.
const SCRIPT: &str = include_str!("app.js");
/// How it looks.
const STYLE: &str = include_str!("app.css");
/// The tab's icon (also spares the browser a 404 for `/favicon.ico`).
const ICON: &str = include_str!("icon.svg");

/// The console's Content-Security-Policy: its own files only, nothing
/// inline, no frames, no form submissions, no `<base>`.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /console/app.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /console/app.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /console/icon.svg`.
pub(crate) async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}

/// One console file with the console's headers. `no-cache`: a browser may
/// keep it but asks again each time, so an upgraded keygate's page and
/// script never meet a stale other half.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = Response::new(Body::from(body));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tag (`<tag ...>` or `</tag>`) in `html`, lower-cased, without
    /// comments and the doctype.
    fn tags(html: &str) -> Vec<String> {
        html.split('<')
            .skip(1)
            .filter_map(|t| t.split_once('>').map(|(tag, _)| tag.to_ascii_lowercase()))
            .filter(|tag| !tag.starts_with('!'))
            .collect()
    }

    #[test]
    fn the_page_has_no_inline_script_style_or_event_handler() {
        for tag in tags(INDEX) {
            if tag.starts_with("script") {
                assert!(tag.contains("src=\"/console/"), "inline script: <{tag}>");
            }
            assert!(!tag.starts_with("style"), "a <style> element: <{tag}>");
            let attributes = tag.split_whitespace().skip(1);
            for attribute in attributes {
                assert!(
                    !attribute.starts_with("style="),
                    "a style attribute: <{tag}>"
                );
                assert!(
                    !attribute.starts_with("on"),
                    "an event handler attribute: <{tag}>"
                );
            }
            assert!(!tag.contains("javascript:"), "a javascript: URL: <{tag}>");
        }
    }

    #[test]
    fn the_page_loads_only_the_consoles_own_files() {
        for tag in tags(INDEX) {
            for attribute in ["src=\"", "href=\""] {
                if let Some((_, rest)) = tag.split_once(attribute) {
                    let url = rest.split('"').next().unwrap_or_default();
                    assert!(
                        url.starts_with("/console/") || url.starts_with('#'),
                        "<{tag}> names {url}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_script_builds_no_markup_from_strings_and_keeps_the_token_off_urls() {
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            ".style.",
            "setAttribute('style'",
            "localStorage",
            "?token",
            "&token",
        ] {
            assert!(!SCRIPT.contains(banned), "app.js uses {banned}");
        }
        assert!(SCRIPT.contains("sessionStorage"));
    }

    #[test]
    fn every_console_answer_carries_the_policy_and_frame_headers() {
        let res = asset("text/css; charset=utf-8", STYLE);
        let h = res.headers();
        assert_eq!(h[CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY_VALUE);
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[CONTENT_TYPE], "text/css; charset=utf-8");
    }
}
