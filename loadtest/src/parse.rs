//! Parsers for command-line values that clap has no built-in parser for:
//! durations (`10s`, `500ms`, `2m`), `name: value` headers, and bounded numbers.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, InvalidHeaderName, InvalidHeaderValue};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("empty duration (expected e.g. 10s, 500ms, 2m)")]
    EmptyDuration,
    #[error("invalid number in duration {0:?}")]
    DurationNumber(String),
    #[error("unknown unit {unit:?} in duration {input:?} (use us, ms, s, m or h)")]
    DurationUnit { input: String, unit: String },
    #[error("duration {0:?} is out of range")]
    DurationRange(String),
    #[error("header {0:?} is not of the form 'name: value'")]
    HeaderForm(String),
    #[error("invalid header name in {0:?}")]
    HeaderName(String),
    #[error("invalid header value in {0:?}")]
    HeaderValue(String),
    #[error("{0:?} is not a number")]
    Number(String),
    #[error("{value} is out of range ({range})")]
    Range { value: String, range: &'static str },
}

impl From<(InvalidHeaderName, &str)> for ParseError {
    fn from((_, input): (InvalidHeaderName, &str)) -> Self {
        ParseError::HeaderName(input.to_string())
    }
}

impl From<(InvalidHeaderValue, &str)> for ParseError {
    fn from((_, input): (InvalidHeaderValue, &str)) -> Self {
        ParseError::HeaderValue(input.to_string())
    }
}

/// Parses `<number><unit>` with unit `us`, `ms`, `s`, `m` or `h`; a bare number is
/// seconds (as in wrk). Integers are converted exactly, decimals (`1.5s`) through f64.
pub fn parse_duration(input: &str) -> Result<Duration, ParseError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(ParseError::EmptyDuration);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(ParseError::DurationNumber(input.to_string()));
    }
    let secs_per_unit: f64 = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(ParseError::DurationUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            });
        }
    };
    let range_error = || ParseError::DurationRange(input.to_string());
    if let Ok(whole) = number.parse::<u64>() {
        return match unit {
            "us" => Ok(Duration::from_micros(whole)),
            "ms" => Ok(Duration::from_millis(whole)),
            _ => whole
                .checked_mul(secs_per_unit as u64)
                .map(Duration::from_secs)
                .ok_or_else(range_error),
        };
    }
    let value: f64 = number
        .parse()
        .map_err(|_| ParseError::DurationNumber(input.to_string()))?;
    Duration::try_from_secs_f64(value * secs_per_unit).map_err(|_| range_error())
}

/// Parses `name: value` (curl's `-H` form); whitespace around the value is dropped.
pub fn parse_header(input: &str) -> Result<(HeaderName, HeaderValue), ParseError> {
    let (name, value) = input
        .split_once(':')
        .ok_or_else(|| ParseError::HeaderForm(input.to_string()))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| (e, input))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|e| (e, input))?;
    Ok((name, value))
}

/// A fraction in `0..=1`, such as `--fail-rate`.
pub fn parse_fraction(input: &str) -> Result<f64, ParseError> {
    let value = parse_f64(input)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ParseError::Range {
            value: input.to_string(),
            range: "0 to 1",
        })
    }
}

/// A strictly positive, finite rate in requests per second.
pub fn parse_rate(input: &str) -> Result<f64, ParseError> {
    let value = parse_f64(input)?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ParseError::Range {
            value: input.to_string(),
            range: "greater than 0",
        })
    }
}

fn parse_f64(input: &str) -> Result<f64, ParseError> {
    input
        .trim()
        .parse()
        .map_err(|_| ParseError::Number(input.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bare_number_is_seconds() {
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn bad_durations_are_rejected() {
        assert_eq!(parse_duration(""), Err(ParseError::EmptyDuration));
        assert!(matches!(
            parse_duration("s"),
            Err(ParseError::DurationNumber(_))
        ));
        assert!(matches!(
            parse_duration("1.2.3s"),
            Err(ParseError::DurationNumber(_))
        ));
        assert!(matches!(
            parse_duration("10d"),
            Err(ParseError::DurationUnit { .. })
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(ParseError::DurationNumber(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999h"),
            Err(ParseError::DurationRange(_))
        ));
    }

    #[test]
    fn headers() {
        let (name, value) = parse_header("X-Stagegate-Stage:  staging ").unwrap();
        assert_eq!(name, "x-stagegate-stage");
        assert_eq!(value, "staging");
        let (_, value) = parse_header("authorization: Bearer a:b").unwrap();
        assert_eq!(value, "Bearer a:b");
        assert!(matches!(
            parse_header("no colon"),
            Err(ParseError::HeaderForm(_))
        ));
        assert!(matches!(
            parse_header("bad name: v"),
            Err(ParseError::HeaderName(_))
        ));
    }

    #[test]
    fn fractions_and_rates() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("x").is_err());
        assert_eq!(parse_rate("1000"), Ok(1000.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("inf").is_err());
    }
}
