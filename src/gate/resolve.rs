//! Step 1 of the request path: find the key the client presents and the org it
//! names. The org is read from borrowed bytes of the request, and the key is
//! taken out of its headers; nothing is allocated.

use http::header::{Entry, HeaderMap, HeaderName};
use http::{HeaderValue, Uri};

use super::OrgSource;
use crate::answer::Refusal;
use crate::org::OrgId;

/// The org a request names, and how much of its path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Named<'a> {
    /// The org id's bytes, well-formed.
    pub(crate) org: &'a [u8],
    /// Bytes of the path to strip before forwarding: `/` and the id in path mode,
    /// none in header mode.
    pub(crate) prefix_len: usize,
}

/// The key header's one value: absent or empty is [`Refusal::MissingKey`], sent
/// more than once is [`Refusal::InvalidKey`].
pub(crate) fn presented_key<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<&'a HeaderValue, Refusal> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(Refusal::MissingKey)?;
    one_key(first, values.next().is_some()).map(|()| first)
}

/// [`presented_key`], with the key's header taken out of `headers` (all
/// of its values, whatever the answer): one lookup where reading it and
/// removing it were two.
pub(crate) fn take_key(headers: &mut HeaderMap, name: &HeaderName) -> Result<HeaderValue, Refusal> {
    // `entry` reserves room for an insert first, and panics where a map at
    // `http`'s largest size cannot grow; `try_entry` says so instead, and
    // such a map (no server parses that many headers) is read, then cleared
    // of the key, in two lookups.
    let Ok(entry) = headers.try_entry(name) else {
        let presented = presented_key(headers, name).cloned();
        headers.remove(name);
        return presented;
    };
    match entry {
        Entry::Vacant(_) => Err(Refusal::MissingKey),
        Entry::Occupied(entry) => {
            let more = entry.iter().nth(1).is_some();
            let value = entry.remove();
            one_key(&value, more).map(|()| value)
        }
    }
}

/// The rule of both for a key header that is there: its `first` value, and
/// whether it has `more`, present one key, or the answer is a refusal.
fn one_key(first: &HeaderValue, more: bool) -> Result<(), Refusal> {
    if more {
        Err(Refusal::InvalidKey)
    } else if first.as_bytes().iter().all(u8::is_ascii_whitespace) {
        Err(Refusal::MissingKey)
    } else {
        Ok(())
    }
}

/// The org a request names, or `None` when it names none or a malformed one.
pub(crate) fn named_org<'a>(
    source: &OrgSource,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Option<Named<'a>> {
    let org = match source {
        OrgSource::Path => {
            let id = OrgId::leading_segment(uri.path().as_bytes())?;
            return Some(Named {
                org: id,
                prefix_len: 1 + id.len(),
            });
        }
        OrgSource::Header(name) => {
            let mut values = headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (Some(v), None) => v.as_bytes(),
                _ => return None,
            }
        }
    };
    OrgId::is_valid(org).then_some(Named { org, prefix_len: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_path(uri: &str) -> Option<(String, usize)> {
        let uri: Uri = uri.parse().unwrap();
        named_org(&OrgSource::Path, &uri, &HeaderMap::new())
            .map(|n| (String::from_utf8(n.org.to_vec()).unwrap(), n.prefix_len))
    }

    #[test]
    fn the_first_path_segment_names_the_org() {
        assert_eq!(by_path("/acme/v1/users?x=1"), Some(("acme".into(), 5)));
        assert_eq!(by_path("/acme"), Some(("acme".into(), 5)));
        assert_eq!(by_path("/acme?x=1"), Some(("acme".into(), 5)));
        assert_eq!(by_path("http://h/acme/v1"), Some(("acme".into(), 5)));
    }

    #[test]
    fn malformed_org_segments_name_no_org() {
        for uri in [
            "/",
            "//v1",
            "/Acme/v1",
            "/../v1",
            "/%2e%2e/v1",
            "/ac%6de/v1",
            "/-acme/v1",
            "*",
        ] {
            assert_eq!(by_path(uri), None, "{uri}");
        }
        let long = format!("/{}/v1", "a".repeat(65));
        assert_eq!(by_path(&long), None);
    }

    #[test]
    fn in_header_mode_exactly_one_header_names_the_org() {
        let name = HeaderName::from_static("x-org-id");
        let src = OrgSource::Header(name.clone());
        let uri: Uri = "/v1/users".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(named_org(&src, &uri, &h), None);
        h.insert(&name, HeaderValue::from_static("acme"));
        assert_eq!(
            named_org(&src, &uri, &h),
            Some(Named {
                org: b"acme",
                prefix_len: 0
            })
        );
        h.append(&name, HeaderValue::from_static("other"));
        assert_eq!(named_org(&src, &uri, &h), None);
    }

    #[test]
    fn the_key_header_must_be_present_once_and_non_empty() {
        let name = HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h, &name), Err(Refusal::MissingKey));
        h.insert(&name, HeaderValue::from_static(""));
        assert_eq!(presented_key(&h, &name), Err(Refusal::MissingKey));
        h.insert(&name, HeaderValue::from_static("   "));
        assert_eq!(presented_key(&h, &name), Err(Refusal::MissingKey));
        h.insert(&name, HeaderValue::from_static("Ab3dEf6hIj9k"));
        assert!(presented_key(&h, &name).is_ok());
        h.append(&name, HeaderValue::from_static("Ab3dEf6hIj9k"));
        assert_eq!(presented_key(&h, &name), Err(Refusal::InvalidKey));
    }

    /// A map at `http`'s largest size, where `entry` would panic: the key
    /// is still taken, and its header still goes.
    #[test]
    fn the_key_is_taken_from_a_map_that_cannot_grow() {
        let name = HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        h.insert(&name, HeaderValue::from_static("Ab3dEf6hIj9k"));
        let mut i = 0;
        while h
            .try_insert(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("x"),
            )
            .is_ok()
        {
            i += 1;
        }
        assert!(h.try_entry(&name).is_err(), "the map is full");
        assert_eq!(
            take_key(&mut h, &name),
            Ok(HeaderValue::from_static("Ab3dEf6hIj9k"))
        );
        assert!(h.get(&name).is_none());
    }

    /// `take_key` answers as `presented_key` does, and leaves no value of
    /// the key's header behind, whatever it answers; other headers stay.
    #[test]
    fn taking_the_key_answers_as_reading_it_and_leaves_none_behind() {
        let name = HeaderName::from_static("x-api-key");
        let cases: [&[&'static str]; 6] = [
            &[],
            &[""],
            &["   "],
            &["Ab3dEf6hIj9k"],
            &["Ab3dEf6hIj9k", "Ab3dEf6hIj9k"],
            &["Ab3dEf6hIj9k", "", "Zz9dEf6hIj9k"],
        ];
        for values in cases {
            let mut h = HeaderMap::new();
            h.insert("x-other", HeaderValue::from_static("kept"));
            for v in values {
                h.append(&name, HeaderValue::from_static(v));
            }
            let read = presented_key(&h, &name).cloned();
            assert_eq!(take_key(&mut h, &name), read, "{values:?}");
            assert!(h.get(&name).is_none(), "{values:?}");
            assert_eq!(h.get("x-other").unwrap(), "kept");
            assert_eq!(h.len(), 1);
        }
    }
}
