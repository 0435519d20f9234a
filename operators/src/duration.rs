//! Durations in pipeline files: `250ms`, `5s`, `1m`, `1h`, `7d` (a unit is required: `"10"` and
//! `10` are refused, not read as ms), read into a [`DurationMs`] when the file is loaded, so a
//! bad one is reported once, with its key.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const UNITS: [(&str, i64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// A positive duration, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationMs(i64);

impl DurationMs {
    /// `ms` milliseconds.
    ///
    /// # Panics
    /// `ms` is not positive (a default written in the code, never input).
    #[must_use]
    pub const fn from_ms(ms: i64) -> Self {
        assert!(ms > 0, "a duration is positive");
        DurationMs(ms)
    }

    /// Milliseconds.
    #[must_use]
    pub const fn ms(self) -> i64 {
        self.0
    }

    /// As a [`std::time::Duration`].
    #[must_use]
    pub const fn std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0 as u64)
    }
}

impl FromStr for DurationMs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim();
        let n: i64 = number.parse().map_err(|_| format!("`{text}` is not a duration (like `250ms`, `5s`, `1m`, `1h`, `7d`)"))?;
        let scale = match unit {
            // `ttl = "10"` read as 10 ms surprised a user who meant 10 s: a unit is required.
            "" => return Err(format!("`{text}` needs a unit: `{n}ms`, `{n}s`, `{n}m`, `{n}h` or `{n}d`")),
            unit => UNITS.iter().find(|(u, _)| *u == unit).map(|(_, s)| *s).ok_or_else(|| format!("`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)"))?,
        };
        let ms = n.checked_mul(scale).ok_or_else(|| format!("`{text}` is too long"))?;
        if ms <= 0 {
            return Err(format!("`{text}` must be positive"));
        }
        Ok(DurationMs(ms))
    }
}

/// In the largest unit that divides it: `90s`, `7d`, `250ms`.
impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = UNITS.iter().find(|(_, s)| self.0 % s == 0).copied().unwrap_or(("ms", 1));
        write!(f, "{}{unit}", self.0 / scale)
    }
}

impl Serialize for DurationMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration, or one word standing for "none" (`off`, `all`).
struct DurationVisitor {
    word: Option<&'static str>,
}

impl Visitor<'_> for DurationVisitor {
    type Value = Option<DurationMs>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.word {
            Some(word) => write!(f, "a duration (like `250ms`, `5s`, `1m`, `1h`, `7d`) or `{word}`"),
            None => write!(f, "a duration (like `250ms`, `5s`, `1m`, `1h`, `7d`)"),
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if self.word == Some(text.trim()) {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|problem| match self.word {
            Some(word) => E::custom(format!("{problem} (or `{word}`)")),
            None => E::custom(problem),
        })
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Err(E::custom(format!("{n} needs a unit, in a string: \"{n}ms\", \"{n}s\", \"{n}m\", \"{n}h\" or \"{n}d\"")))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Err(E::custom(format!("{n} needs a unit, in a string: \"{n}ms\", \"{n}s\", \"{n}m\", \"{n}h\" or \"{n}d\"")))
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(d.deserialize_any(DurationVisitor { word: None })?.expect("only a word gives none"))
    }
}

/// `#[serde(deserialize_with = "duration_or_off")]`: a duration, or `off` for none.
///
/// # Errors
/// Neither a duration nor `off`.
pub fn duration_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DurationMs>, D::Error> {
    d.deserialize_any(DurationVisitor { word: Some("off") })
}

/// `#[serde(deserialize_with = "duration_or_all")]`: a duration, or `all` for no bound.
///
/// # Errors
/// Neither a duration nor `all`.
pub fn duration_or_all<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DurationMs>, D::Error> {
    d.deserialize_any(DurationVisitor { word: Some("all") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_print_in_the_largest_that_divides() {
        let ms = |t: &str| t.parse::<DurationMs>().map(DurationMs::ms);
        assert_eq!(ms("7d"), Ok(604_800_000));
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms(" 90ms "), Ok(90));
        assert_eq!(ms("10"), Err("`10` needs a unit: `10ms`, `10s`, `10m`, `10h` or `10d`".into()));
        assert_eq!(ms("5 parsecs"), Err("`5 parsecs`: unknown unit `parsecs` (use ms, s, m, h or d)".into()));
        assert_eq!(ms("0s"), Err("`0s` must be positive".into()));
        assert_eq!(ms("99999999999999d"), Err("`99999999999999d` is too long".into()));
        let shown: Vec<String> = [90_000, 604_800_000, 250, 3_600_000, 1_500].map(|m| DurationMs::from_ms(m).to_string()).into();
        assert_eq!(shown, ["90s", "7d", "250ms", "1h", "1500ms"]);
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Keys {
        d: Option<DurationMs>,
        #[serde(default, deserialize_with = "duration_or_off")]
        every: Option<DurationMs>,
    }

    #[test]
    fn a_duration_is_a_string_with_its_unit_and_off_means_none() {
        let keys = |t: &str| toml::from_str::<Keys>(t).map_err(|e| e.message().to_string());
        assert_eq!(keys("d = \"5s\"\nevery = \"off\""), Ok(Keys { d: Some(DurationMs(5_000)), every: None }));
        assert_eq!(keys("d = \"250ms\"\nevery = \"10m\""), Ok(Keys { d: Some(DurationMs(250)), every: Some(DurationMs(600_000)) }));
        assert_eq!(keys("d = 120"), Err("120 needs a unit, in a string: \"120ms\", \"120s\", \"120m\", \"120h\" or \"120d\"".into()));
        assert_eq!(keys("d = -1"), Err("-1 needs a unit, in a string: \"-1ms\", \"-1s\", \"-1m\", \"-1h\" or \"-1d\"".into()));
        assert_eq!(keys("every = \"never\""), Err("`never` is not a duration (like `250ms`, `5s`, `1m`, `1h`, `7d`) (or `off`)".into()));
        assert_eq!(keys("d = true"), Err("invalid type: boolean `true`, expected a duration (like `250ms`, `5s`, `1m`, `1h`, `7d`)".into()));
    }
}
