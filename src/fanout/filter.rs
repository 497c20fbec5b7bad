//! MQTT-style topic filters over `<device>/<sensor>` (SPEC §4).
//!
//! `+` matches one level, `#` the rest (only as the last level). Topics here
//! always have exactly two literal levels, because device ids and sensor
//! names cannot contain `/`, `+` or `#`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Level {
    Literal(String),
    /// `+`
    One,
    /// `#`
    Rest,
}

/// A parsed, valid topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad topic filter {filter:?}: {reason}")]
pub struct FilterError {
    pub filter: String,
    pub reason: &'static str,
}

impl TopicFilter {
    pub fn parse(s: &str) -> Result<TopicFilter, FilterError> {
        let err = |reason| FilterError {
            filter: s.chars().take(100).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > 256 {
            return Err(err("longer than 256 bytes"));
        }
        let parts: Vec<&str> = s.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(err("# must be the last level")),
                "+" => Level::One,
                p if p.contains(['+', '#']) => return Err(err("+ and # must fill a whole level")),
                "" => return Err(err("empty level")),
                p => Level::Literal(p.to_string()),
            };
            levels.push(level);
        }
        Ok(TopicFilter { levels })
    }

    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// Does the filter match the topic `<device>/<sensor>`?
    pub fn matches(&self, device: &str, sensor: &str) -> bool {
        let topic = [device, sensor];
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Rest => return true,
                _ if i >= topic.len() => return false,
                Level::One => {}
                Level::Literal(l) => {
                    if l != topic[i] {
                        return false;
                    }
                }
            }
        }
        self.levels.len() == topic.len()
    }

    /// Does every topic this filter can match also match `self`? Used to
    /// keep a subscriber inside its token's `topics` claim.
    pub fn covers(&self, other: &TopicFilter) -> bool {
        for (i, mine) in self.levels.iter().enumerate() {
            let Some(theirs) = other.levels.get(i) else {
                return false; // `other` is shorter: it matches topics we don't
            };
            match (mine, theirs) {
                (Level::Rest, _) => return true,
                (_, Level::Rest) => return false,
                (Level::One, _) => {}
                (Level::Literal(_), Level::One) => return false,
                (Level::Literal(a), Level::Literal(b)) if a != b => return false,
                (Level::Literal(_), Level::Literal(_)) => {}
            }
        }
        self.levels.len() == other.levels.len()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match level {
                Level::Literal(l) => f.write_str(l)?,
                Level::One => f.write_str("+")?,
                Level::Rest => f.write_str("#")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn every_filter_form_matches_as_mqtt_does() {
        assert!(f("d1/temp").matches("d1", "temp"));
        assert!(!f("d1/temp").matches("d1", "hum"));
        assert!(f("+/temp").matches("d9", "temp"));
        assert!(!f("+/temp").matches("d9", "hum"));
        assert!(f("d1/#").matches("d1", "x"));
        assert!(!f("d1/#").matches("d2", "x"));
        assert!(f("#").matches("a", "b"));
        assert!(f("+/+").matches("a", "b"));
        assert!(!f("+").matches("a", "b"));
        assert!(!f("d1/temp/x").matches("d1", "temp"));
        assert!(
            f("d1/temp/#").matches("d1", "temp"),
            "# also matches the parent level in MQTT"
        );
    }

    #[test]
    fn malformed_filters_are_rejected() {
        for bad in ["", "a/#/b", "a+/b", "a/b#", "a//b", "/a"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn covers_is_filter_inclusion() {
        assert!(f("#").covers(&f("d1/temp")));
        assert!(f("d1/#").covers(&f("d1/+")));
        assert!(f("+/temp").covers(&f("d1/temp")));
        assert!(!f("d1/temp").covers(&f("+/temp")));
        assert!(!f("d1/+").covers(&f("d1/#")));
        assert!(!f("d1/#").covers(&f("#")));
        assert!(f("d1/temp").covers(&f("d1/temp")));
    }

    #[test]
    fn display_round_trips() {
        for s in ["d1/temp", "+/x", "#", "a/+/#"] {
            assert_eq!(f(s).to_string(), s);
        }
    }
}
