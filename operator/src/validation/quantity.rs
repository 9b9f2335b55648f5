//! Kubernetes quantities (`500m`, `1.5Gi`, `1e3`), parsed as the API server does, so that
//! requests can be compared with limits before a Job exists.

use crate::api::MAX_QUANTITY_EXPONENT_DIGITS;

/// The largest quantity Kubernetes represents, in nano-units: `2^63-1` units. Larger values
/// are capped by the API server, so they compare equal here too.
pub(super) const MAX_NANOS: i128 = i64::MAX as i128 * 1_000_000_000;

/// Parses a Kubernetes quantity (`500m`, `2`, `1.5Gi`, `1e3`) into nano-units, rounding up
/// sub-nano fractions and capping at `2^63-1` units as the API server does. `None` when the
/// text is not a quantity, or its exponent has more than
/// [`MAX_QUANTITY_EXPONENT_DIGITS`] digits (which the API server would misread).
pub fn parse_quantity(text: &str) -> Option<i128> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let (exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            // Go's ParseInt decides what an exponent is: optional sign, decimal digits. The
            // API server then truncates it to 32 bits (1e4294967296 is 1), so a long exponent
            // is refused rather than capped as its true value would be.
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty()
                || digits.len() > MAX_QUANTITY_EXPONENT_DIGITS
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (exponent.parse().ok()?, 0)
        }
    };
    // The significand as an integer of at most 38 digits (more cannot change the capped or
    // nano-rounded result); dropped non-zero digits only matter for rounding up.
    let mut significand: u128 = 0;
    let mut digits = 0u32;
    let mut scale = exp10.checked_sub(fraction.len() as i64)?;
    let mut dropped = false;
    for b in whole.bytes().chain(fraction.bytes()) {
        let d = u128::from(b - b'0');
        if significand == 0 && d == 0 {
            continue;
        }
        if digits < 38 {
            significand = significand * 10 + d;
            digits += 1;
        } else {
            scale += 1;
            dropped |= d != 0;
        }
    }
    let cap = MAX_NANOS as u128;
    let nano_scale = scale + 9;
    let nanos = if significand == 0 {
        0
    } else if nano_scale >= 0 {
        let mut n = significand.saturating_mul(1 << exp2);
        for _ in 0..nano_scale.min(40) {
            n = n.saturating_mul(10);
        }
        n
    } else {
        let shifted = significand.checked_mul(1 << exp2);
        let base = shifted.unwrap_or(significand);
        let divisor = 10u128.checked_pow(u32::try_from(-nano_scale).ok()?);
        let mut n = match divisor {
            Some(divisor) => {
                base.div_ceil(divisor) + u128::from(dropped && base.is_multiple_of(divisor))
            }
            None => 1,
        };
        if shifted.is_none() {
            n = n.saturating_mul(1 << exp2);
        }
        n
    };
    let nanos = nanos.min(cap) as i128;
    Some(if negative { -nanos } else { nanos })
}
