//! Query strings of list endpoints: repeated and comma-separated arrays, `createdTime`
//! filters (plain or `createdTime[gt|gte|lt|lte]`), and DR cursor pagination
//! (`limit` 1..100 default 10, `startingAfter` / `endingBefore`, docs/digital-river.md §1.4, §3.1).

use chrono::{DateTime, Utc};

use crate::clock::parse_time;
use crate::error::ApiError;

/// Decoded query parameters in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(Vec<(String, String)>);

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Params {
    /// Parses a raw query string.
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (percent_decode(k), percent_decode(v)),
                None => (percent_decode(p), String::new()),
            })
            .collect();
        Self(pairs)
    }

    /// First value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` (or `key[]`) appears.
    pub(crate) fn has(&self, key: &str) -> bool {
        let bracketed = format!("{key}[]");
        self.0.iter().any(|(k, _)| k == key || *k == bracketed)
    }

    /// All values of an array parameter: repeated keys (`ids=a&ids=b`, also `ids[]=`) and
    /// comma lists (`ids=a,b`) are both accepted — DR's encoding is UNCONFIRMED (docs/digital-river.md §1.4).
    pub(crate) fn list(&self, key: &str) -> Vec<String> {
        let bracketed = format!("{key}[]");
        self.0
            .iter()
            .filter(|(k, _)| k == key || *k == bracketed)
            .flat_map(|(_, v)| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Pagination parameters.
    pub(crate) fn page(&self) -> Result<Page, ApiError> {
        let limit = match self.get("limit") {
            None => 10,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "limit",
                        "'limit' must be an integer between 1 and 100.",
                    ))
                }
            },
        };
        let starting_after = self
            .get("startingAfter")
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let ending_before = self
            .get("endingBefore")
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if starting_after.is_some() && ending_before.is_some() {
            return Err(ApiError::invalid(
                "startingAfter",
                "Use either 'startingAfter' or 'endingBefore', not both.",
            ));
        }
        Ok(Page {
            limit,
            starting_after,
            ending_before,
        })
    }

    /// `createdTime` filters.
    pub(crate) fn created_time(&self) -> Result<TimeFilter, ApiError> {
        let read = |key: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
            match self.get(key) {
                None => Ok(None),
                Some(text) => parse_time(text).map(Some).ok_or_else(|| {
                    ApiError::invalid(key, format!("'{key}' must be an ISO-8601 date-time."))
                }),
            }
        };
        Ok(TimeFilter {
            eq: read("createdTime")?,
            gt: read("createdTime[gt]")?,
            gte: read("createdTime[gte]")?,
            lt: read("createdTime[lt]")?,
            lte: read("createdTime[lte]")?,
        })
    }
}

/// `createdTime` bounds.
#[derive(Debug, Default, Clone)]
pub(crate) struct TimeFilter {
    eq: Option<DateTime<Utc>>,
    gt: Option<DateTime<Utc>>,
    gte: Option<DateTime<Utc>>,
    lt: Option<DateTime<Utc>>,
    lte: Option<DateTime<Utc>>,
}

impl TimeFilter {
    /// Whether `t` passes. A plain `createdTime` matches within the same second (resource
    /// timestamps are whole seconds).
    pub(crate) fn accepts(&self, t: DateTime<Utc>) -> bool {
        let secs = t.timestamp();
        self.eq.is_none_or(|e| e.timestamp() == secs)
            && self.gt.is_none_or(|b| t > b)
            && self.gte.is_none_or(|b| t >= b)
            && self.lt.is_none_or(|b| t < b)
            && self.lte.is_none_or(|b| t <= b)
    }
}

/// Cursor pagination request.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    limit: usize,
    starting_after: Option<String>,
    ending_before: Option<String>,
}

impl Page {
    /// Cuts one page out of a newest-first list. Returns the page and `hasMore`
    /// (more items beyond the page in the direction of travel).
    pub(crate) fn apply<T>(
        &self,
        items: Vec<T>,
        id_of: impl Fn(&T) -> &str,
    ) -> Result<(Vec<T>, bool), ApiError> {
        let find = |cursor: &str, param: &str| {
            items
                .iter()
                .position(|it| id_of(it) == cursor)
                .ok_or_else(|| {
                    ApiError::invalid(
                        param,
                        format!("No object with id '{cursor}' matches this list."),
                    )
                })
        };
        if let Some(cursor) = &self.starting_after {
            let pos = find(cursor, "startingAfter")?;
            let rest: Vec<T> = items.into_iter().skip(pos + 1).collect();
            let has_more = rest.len() > self.limit;
            return Ok((rest.into_iter().take(self.limit).collect(), has_more));
        }
        if let Some(cursor) = &self.ending_before {
            let pos = find(cursor, "endingBefore")?;
            let has_more = pos > self.limit;
            let start = pos.saturating_sub(self.limit);
            let page = items.into_iter().skip(start).take(pos - start).collect();
            return Ok((page, has_more));
        }
        let has_more = items.len() > self.limit;
        Ok((items.into_iter().take(self.limit).collect(), has_more))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_arrays_both_ways_and_brackets() {
        let p = Params::parse(Some(
            "types=a.b&types=c,d&createdTime%5Bgt%5D=2020-01-01T00:00:00Z&x=a+b",
        ));
        assert_eq!(p.list("types"), vec!["a.b", "c", "d"]);
        assert_eq!(p.get("createdTime[gt]"), Some("2020-01-01T00:00:00Z"));
        assert_eq!(p.get("x"), Some("a b"));
    }

    #[test]
    fn pages_newest_first() {
        let items: Vec<String> = (0..25).map(|i| format!("id{i}")).collect();
        let page = Params::parse(Some("limit=10")).page().unwrap();
        let (p1, more) = page.apply(items.clone(), |s| s.as_str()).unwrap();
        assert_eq!((p1.len(), more), (10, true));
        let page = Params::parse(Some("limit=10&startingAfter=id19"))
            .page()
            .unwrap();
        let (p3, more) = page.apply(items.clone(), |s| s.as_str()).unwrap();
        assert_eq!(
            (p3.first().map(String::as_str), p3.len(), more),
            (Some("id20"), 5, false)
        );
        let page = Params::parse(Some("limit=10&endingBefore=id20"))
            .page()
            .unwrap();
        let (p2, more) = page.apply(items, |s| s.as_str()).unwrap();
        assert_eq!(
            (p2.first().map(String::as_str), p2.len(), more),
            (Some("id10"), 10, true)
        );
    }
}
