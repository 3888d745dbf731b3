//! The perfect-foresight bound for a miner: an exact dynamic program over on/off states.
//!
//! One device (or a group of identical ones) over a known price vector. Per interval of `dt`
//! seconds at price `p` ($/MWh): running earns `rev·dt − on_w·p·dt`, standing idle costs
//! `off_w·p·dt`; starting costs `start_usd`, stopping `stop_usd`. The device starts off. The DP
//! keeps, per interval, the best value ending on and ending off, so it is exact and O(n).
//!
//! [`evaluate`] applies the very same accounting to any on/off schedule, so `oracle ≥ evaluate(s)`
//! holds for every schedule `s` (property-tested), and the simulator charges the same amounts.

/// Economics of one on/off device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnOff {
    /// Revenue while on, $/h.
    pub rev_usd_per_h: f64,
    /// Power drawn while on, watts.
    pub on_w: f64,
    /// Power drawn while off (standby), watts.
    pub off_w: f64,
    /// Cost of one off→on transition, dollars.
    pub start_usd: f64,
    /// Cost of one on→off transition, dollars.
    pub stop_usd: f64,
}

fn step_value(c: &OnOff, p: f64, dt_h: f64, on: bool) -> f64 {
    if on {
        (c.rev_usd_per_h - c.on_w * p / 1e6) * dt_h
    } else {
        -c.off_w * p / 1e6 * dt_h
    }
}

/// Value of a schedule (`on[i]` for interval `i`), dollars. Shorter schedules are padded off.
pub fn evaluate(prices: &[f64], dt_s: f64, c: &OnOff, on: &[bool]) -> f64 {
    let dt_h = dt_s / 3600.0;
    let mut prev = false;
    let mut v = 0.0;
    for (i, &p) in prices.iter().enumerate() {
        let s = on.get(i).copied().unwrap_or(false);
        if s && !prev {
            v -= c.start_usd;
        } else if !s && prev {
            v -= c.stop_usd;
        }
        v += step_value(c, p, dt_h, s);
        prev = s;
    }
    v
}

/// The optimal schedule and its value (writes the schedule into `out`).
pub fn optimal(prices: &[f64], dt_s: f64, c: &OnOff, out: &mut Vec<bool>) -> f64 {
    let dt_h = dt_s / 3600.0;
    let n = prices.len();
    // Back-pointers: bit 0 = predecessor of "on" was on, bit 1 = predecessor of "off" was on.
    let mut back = vec![0u8; n];
    let (mut v_off, mut v_on) = (0.0f64, f64::NEG_INFINITY);
    for (i, &p) in prices.iter().enumerate() {
        let on_from_on = v_on;
        let on_from_off = v_off - c.start_usd;
        let off_from_off = v_off;
        let off_from_on = v_on - c.stop_usd;
        let mut b = 0u8;
        let new_on = if on_from_on >= on_from_off {
            b |= 1;
            on_from_on
        } else {
            on_from_off
        };
        let new_off = if off_from_on > off_from_off {
            b |= 2;
            off_from_on
        } else {
            off_from_off
        };
        back[i] = b;
        v_on = new_on + step_value(c, p, dt_h, true);
        v_off = new_off + step_value(c, p, dt_h, false);
    }
    out.clear();
    out.resize(n, false);
    let (best, mut on) = if v_on > v_off {
        (v_on, true)
    } else {
        (v_off, false)
    };
    for i in (0..n).rev() {
        out[i] = on;
        on = if on {
            back[i] & 1 != 0
        } else {
            back[i] & 2 != 0
        };
    }
    if n == 0 {
        return 0.0;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: OnOff = OnOff {
        rev_usd_per_h: 0.3,
        on_w: 3000.0,
        off_w: 15.0,
        start_usd: 0.1,
        stop_usd: 0.05,
    };

    #[test]
    fn mines_below_break_even_and_skips_short_spikes() {
        // Break-even ≈ 100 $/MWh. A one-hour spike to 110 is not worth a stop/start (0.15 $ vs
        // 0.03 $ saved); a long one to 300 is.
        let mut prices = vec![30.0; 10];
        prices[3] = 110.0;
        prices.extend([300.0; 5]);
        prices.extend([30.0; 3]);
        let mut s = Vec::new();
        let v = optimal(&prices, 3600.0, &C, &mut s);
        assert!(s[3], "short mild spike ridden through");
        assert!(s[10..15].iter().all(|&x| !x), "long spike curtailed");
        assert!(s[15..].iter().all(|&x| x));
        assert!((v - evaluate(&prices, 3600.0, &C, &s)).abs() < 1e-9);
    }
}
