//! Kubernetes-style memory quantities (`256Mi`, `1G`, `1048576`).
//!
//! Pure parsing; no I/O.

/// A text that is not a memory quantity; each variant holds the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The suffix is none of the known units.
    #[error("unknown unit {unit:?} in {text:?} (use Ki, Mi, Gi, K, M, G or plain bytes)")]
    UnknownUnit {
        /// The whole quantity.
        text: String,
        /// Its suffix.
        unit: String,
    },
    /// The part before the unit is not a number.
    #[error("{0:?} is not a memory quantity")]
    NotANumber(String),
    /// Less than one byte, or more than 2^64.
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

/// Parses a memory quantity into bytes. Binary suffixes `Ki Mi Gi Ti`,
/// decimal suffixes `K M G T` (also lower-case `k`), or plain bytes.
pub fn parse_memory(s: &str) -> Result<u64, QuantityError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(QuantityError::UnknownUnit {
                text: s.to_string(),
                unit: other.to_string(),
            });
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| QuantityError::NotANumber(s.to_string()))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(QuantityError::OutOfRange(s.to_string()));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn binary_and_decimal_suffixes_are_understood() {
        assert_eq!(parse_memory("256Mi"), Ok(256 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("64Ki"), Ok(64 << 10));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1.5M"), Ok(1_500_000));
        assert_eq!(parse_memory("4096"), Ok(4096));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse_memory("12XB").is_err());
        assert!(parse_memory("Mi").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("-5Mi").is_err());
    }

    #[test]
    fn each_refusal_says_what_is_wrong_with_which_text() {
        let e = parse_memory(" 12XB ").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unknown unit "XB" in "12XB" (use Ki, Mi, Gi, K, M, G or plain bytes)"#
        );
        assert_eq!(
            parse_memory("Mi").unwrap_err().to_string(),
            r#""Mi" is not a memory quantity"#
        );
        assert_eq!(
            parse_memory("0"),
            Err(super::QuantityError::OutOfRange("0".into()))
        );
    }
}
