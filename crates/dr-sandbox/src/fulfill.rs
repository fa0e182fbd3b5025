//! Capture / cancel allocation rules, as pure functions on minor units.
//!
//! - Each line's share of the order total = line amount + line tax + a part of shipping
//!   (and shipping tax) proportional to the line amount, the rounding remainder on the
//!   last line. The shares add up to `totalAmount` exactly.
//! - Units of a line take `share / quantity` rounded half up; the unit that empties the
//!   line takes whatever is left. DR's "Applying store credit" page: 1 of 2 units of 26.89 → 13.45, the last 13.44.
//! - A capture takes store credit first, then the card; a cancel takes the card first,
//!   then store credit (DR's "Applying store credit" page, docs/digital-river.md §2.2).

use super::model::SourceKind;

/// Each line's share of the order total. `lines` = (amount, tax) per line (all
/// non-negative). `None` when a sum does not fit in i64.
pub(crate) fn line_shares(lines: &[(i64, i64)], shipping_total: i64) -> Option<Vec<i64>> {
    let amounts = lines
        .iter()
        .try_fold(0i64, |sum, (amount, _)| sum.checked_add(*amount))?;
    let mut shares = Vec::with_capacity(lines.len());
    let mut shipping_left = shipping_total;
    for (idx, (amount, tax)) in lines.iter().enumerate() {
        let part = if idx + 1 == lines.len() {
            shipping_left
        } else if amounts > 0 {
            // i128: amount * shipping may exceed i64 for huge values; the quotient
            // is at most `shipping_total`.
            i64::try_from(i128::from(shipping_total) * i128::from(*amount) / i128::from(amounts))
                .ok()?
        } else {
            0
        };
        shipping_left = shipping_left.checked_sub(part)?;
        shares.push(amount.checked_add(*tax)?.checked_add(part)?);
    }
    Some(shares)
}

/// The amount for taking `units` more units of a line with `quantity` units and total
/// `share`, of which `done_units` are already taken for `done_amount`. `None` when a
/// step does not fit in i64.
pub(crate) fn units_amount(
    share: i64,
    quantity: i64,
    done_units: i64,
    done_amount: i64,
    units: i64,
) -> Option<i64> {
    if units <= 0 || quantity <= 0 {
        return Some(0);
    }
    let left = share.checked_sub(done_amount)?.max(0);
    if done_units.checked_add(units)? >= quantity {
        return Some(left);
    }
    let per_unit = super::money::div_round_half_up(share, quantity);
    Some(per_unit.checked_mul(units)?.min(left))
}

/// Splits `amount` over charges in priority order. `open` = (charge index, kind, open
/// amount) in `payment.charges[]` order. Returns (charge index, amount) with amount > 0.
pub(crate) fn split(
    amount: i64,
    open: &[(usize, SourceKind, i64)],
    credit_first: bool,
) -> Vec<(usize, i64)> {
    let first = if credit_first {
        SourceKind::CustomerCredit
    } else {
        SourceKind::CreditCard
    };
    let ordered = open
        .iter()
        .filter(|(_, k, _)| *k == first)
        .chain(open.iter().filter(|(_, k, _)| *k != first));
    let mut left = amount;
    let mut out = Vec::new();
    for (idx, _, available) in ordered {
        if left <= 0 {
            break;
        }
        let take = left.min(*available);
        if take > 0 {
            out.push((*idx, take));
            left -= take;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_total() {
        let shares = line_shares(&[(2000, 161), (1000, 40)], 500 + 40).unwrap();
        assert_eq!(shares.iter().sum::<i64>(), 2000 + 161 + 1000 + 40 + 540);
    }

    #[test]
    fn last_unit_takes_the_remainder() {
        // DR's "Applying store credit" page: 26.89 over 2 units.
        assert_eq!(units_amount(2689, 2, 0, 0, 1), Some(1345));
        assert_eq!(units_amount(2689, 2, 1, 1345, 1), Some(1344));
        assert_eq!(units_amount(1000, 3, 0, 0, 3), Some(1000));
        assert_eq!(units_amount(1000, 3, 0, 0, 2), Some(666));
        assert_eq!(units_amount(1000, 3, 2, 666, 1), Some(334));
    }

    #[test]
    fn sums_that_do_not_fit_are_refused_not_wrapped() {
        assert_eq!(line_shares(&[(i64::MAX, 0), (1, 0)], 0), None);
        assert_eq!(line_shares(&[(i64::MAX, 1)], 0), None);
        assert_eq!(units_amount(10, 2, i64::MAX, 0, 1), None);
        assert_eq!(units_amount(i64::MAX, 3, 0, -1, 1), None);
        assert_eq!(units_amount(i64::MAX, 2, 0, 0, 1), Some(i64::MAX / 2 + 1));
    }

    #[test]
    fn capture_takes_store_credit_first_and_cancel_the_card_first() {
        let open = [
            (0, SourceKind::CreditCard, 1589),
            (1, SourceKind::CustomerCredit, 1100),
        ];
        assert_eq!(split(1345, &open, true), vec![(1, 1100), (0, 245)]);
        assert_eq!(split(1345, &open, false), vec![(0, 1345)]);
    }
}
