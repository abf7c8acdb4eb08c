//! Topic patterns of the MQTT connector's mappings: `heat/{site}/{sensor}/pressure` matches a topic level
//! by level, captures the named levels and fills a sensor-id template such as `{site}.{sensor}`.

use std::fmt;

/// A parsed pattern: levels separated by `/`; `{name}` captures one level, `+` matches one level, a
/// final `#` matches the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPattern {
    levels: Vec<Level>,
    source: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Level {
    Exact(String),
    Capture(String),
    Any,
    Rest,
}

/// Why a pattern or template is not valid.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The captures of one match, in the order of the pattern. Patterns have few captures, so a small
/// vector beats a map.
pub type Captures<'t> = Vec<(&'t str, &'t str)>;

impl TopicPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError("the topic pattern is empty".into()));
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = if *part == "#" {
                if i + 1 != parts.len() {
                    return Err(PatternError("`#` must be the last level".into()));
                }
                Level::Rest
            } else if *part == "+" {
                Level::Any
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(PatternError(format!(
                        "`{part}`: a capture is `{{name}}` with letters, digits or `_`"
                    )));
                }
                if levels
                    .iter()
                    .any(|l| matches!(l, Level::Capture(n) if n == name))
                {
                    return Err(PatternError(format!("`{{{name}}}` is captured twice")));
                }
                Level::Capture(name.to_string())
            } else if part.contains(['+', '#', '{', '}']) {
                return Err(PatternError(format!(
                    "`{part}`: wildcards and captures must fill a whole level"
                )));
            } else {
                Level::Exact((*part).to_string())
            };
            levels.push(level);
        }
        Ok(TopicPattern {
            levels,
            source: pattern.to_string(),
        })
    }

    /// The MQTT subscription filter: captures become `+`.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Exact(s) => s.as_str(),
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Matches a topic, returning the captured levels.
    pub fn matches<'t>(&'t self, topic: &'t str) -> Option<Captures<'t>> {
        let mut caps = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(caps),
                _ => {
                    let part = parts.next()?;
                    match level {
                        Level::Exact(s) if s != part => return None,
                        Level::Capture(name) => {
                            if part.is_empty() {
                                return None;
                            }
                            caps.push((name.as_str(), part));
                        }
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(caps)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// A sensor-id template: text with `{name}` placeholders filled from a match's captures.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(String),
}

impl Template {
    /// Parses a template whose placeholders must all be captures of `pattern`.
    pub fn parse(template: &str, pattern: &TopicPattern) -> Result<Self, PatternError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(PatternError(format!("`{template}`: `{{` is not closed")));
            };
            let name = &rest[open + 1..open + close];
            if !pattern.captures().any(|c| c == name) {
                return Err(PatternError(format!(
                    "`{{{name}}}` is not captured by the topic `{}`",
                    pattern.as_str()
                )));
            }
            parts.push(Part::Var(name.to_string()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err(PatternError("the sensor template is empty".into()));
        }
        Ok(Template { parts })
    }

    pub fn render(&self, caps: &Captures<'_>) -> String {
        let mut out = String::with_capacity(32);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => {
                    if let Some((_, v)) = caps.iter().find(|(n, _)| n == name) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_levels_and_fills_the_template() {
        let p = TopicPattern::parse("heat/{site}/{sensor}/pressure").unwrap();
        assert_eq!(p.filter(), "heat/+/+/pressure");
        let caps = p.matches("heat/hp-3/p_supply/pressure").unwrap();
        let t = Template::parse("{site}.{sensor}", &p).unwrap();
        assert_eq!(t.render(&caps), "hp-3.p_supply");
        assert!(p.matches("heat/hp-3/p_supply/temperature").is_none());
        assert!(p.matches("heat/hp-3/p_supply").is_none());
        assert!(p.matches("heat/hp-3/p_supply/pressure/x").is_none());
        assert!(p.matches("heat//p_supply/pressure").is_none());
    }

    #[test]
    fn wildcards() {
        let p = TopicPattern::parse("sensors/+/{sensor}/#").unwrap();
        assert_eq!(p.filter(), "sensors/+/+/#");
        assert_eq!(p.matches("sensors/a/b").unwrap(), vec![("sensor", "b")]);
        assert_eq!(p.matches("sensors/a/b/c/d").unwrap(), vec![("sensor", "b")]);
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("a/#/b", "last level"),
            ("a/x+", "whole level"),
            ("a/{x y}", "letters"),
            ("{a}/{a}", "twice"),
        ] {
            let e = TopicPattern::parse(bad).unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
        let p = TopicPattern::parse("a/{x}").unwrap();
        assert!(
            Template::parse("{y}", &p)
                .unwrap_err()
                .0
                .contains("not captured")
        );
        assert!(
            Template::parse("{x", &p)
                .unwrap_err()
                .0
                .contains("not closed")
        );
    }
}
