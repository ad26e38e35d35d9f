//! Exact decimals: amounts and prices read from text into integers, never
//! through floating point, refusing what cannot be represented exactly.

/// Parses a non-negative decimal literal (`487`, `487.5`, `4.875e2`) exactly
/// into an integer scaled by `10^scale`. Anything not exactly representable
/// (a third decimal for cents, a sign, spaces, thousands separators, overflow)
/// is `None`: the proxy never rounds money.
pub fn decimal_to_scaled(text: &str, scale: u32) -> Option<u64> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => {
            let exp = &text[i + 1..];
            let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: i64 = exp.parse().ok()?;
            (&text[..i], exp)
        }
        None => (text, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (mantissa.contains('.') && frac_part.is_empty())
    {
        return None;
    }
    // value = digits × 10^(exponent − frac_len); scaled = that × 10^scale.
    let digits = format!("{int_part}{frac_part}");
    let shift = exponent
        .checked_add(i64::from(scale))
        .and_then(|e| e.checked_sub(i64::try_from(frac_part.len()).ok()?))?;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    let (kept, dropped) = if shift >= 0 {
        (digits, "")
    } else {
        let cut = usize::try_from(-shift).ok()?;
        if cut >= digits.len() {
            ("", digits)
        } else {
            digits.split_at(digits.len() - cut)
        }
    };
    if dropped.bytes().any(|b| b != b'0') {
        return None;
    }
    let mut value: u64 = if kept.is_empty() {
        0
    } else {
        kept.parse().ok()?
    };
    if shift > 0 {
        let pow = 10u64.checked_pow(u32::try_from(shift).ok()?);
        value = pow.and_then(|p| value.checked_mul(p))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal_to_scaled("487", 2), Some(48700));
        assert_eq!(decimal_to_scaled("487.00", 2), Some(48700));
        assert_eq!(decimal_to_scaled("487.5", 2), Some(48750));
        assert_eq!(decimal_to_scaled("0.07", 2), Some(7));
        assert_eq!(decimal_to_scaled("4.875e2", 2), Some(48750));
        assert_eq!(decimal_to_scaled("48750E-2", 2), Some(48750));
        assert_eq!(decimal_to_scaled("487.000", 2), Some(48700));
        assert_eq!(decimal_to_scaled("0", 2), Some(0));
        assert_eq!(decimal_to_scaled("600.01", 2), Some(60001));
        for bad in [
            "487.001",
            "-1",
            "+1",
            " 1",
            "1,000",
            "",
            ".5",
            "5.",
            "1e",
            "0x10",
            "1.2.3",
            "NaN",
            "4.87501e2",
            "99999999999999999999",
            "1e400",
        ] {
            assert_eq!(decimal_to_scaled(bad, 2), None, "{bad:?}");
        }
        assert_eq!(decimal_to_scaled("48700", 0), Some(48700));
        assert_eq!(decimal_to_scaled("487.5", 0), None);
        assert_eq!(decimal_to_scaled("18446744073709551615", 0), Some(u64::MAX));
        assert_eq!(decimal_to_scaled("18446744073709551616", 0), None);
    }
}
