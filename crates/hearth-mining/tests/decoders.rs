//! Decoders of pool and miner input never panic: arbitrary bytes and randomly mutated valid
//! messages (a fixed-seed generator, so failures reproduce) give a value or an error.

use hearth_mining::cgminer::{parse_devs, parse_pools, parse_reply, parse_summary};
use hearth_mining::luxos::parse_session_id;
use hearth_mining::stratum::parse_pool_line;

const NOTIFY: &str = r#"{"params":["6920bab400003e78","2054771533c6373887fb44c6081b230c58336592000189f80000000000000000","01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff3503a61e0e000489b4276904a9b1a0040c","0a636b706f6f6c112f736f6c6f2e636b706f6f6c2e6f72672fffffffff0100000000000000000000000000",["4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"],"20000000","1701e2a0","6927b489",true],"id":null,"method":"mining.notify"}"#;
const POOLS: &str = r#"{"STATUS":[{"STATUS":"S","When":1,"Code":7,"Msg":"1 Pool(s)","Description":"cgminer 4.11.1"}],"POOLS":[{"POOL":0,"URL":"stratum+tcp://p:3333","Status":"Alive","Priority":0,"Accepted":5,"Rejected":1,"User":"w","Stratum Active":true}],"SUMMARY":[{"MHS 5s":1.5,"Accepted":3}],"DEVS":[{"ASC":0,"Temperature":"61.5","Enabled":"Y"}],"SESSION":[{"SessionID":"abc"}],"id":1}"#;

fn mutate(base: &str, cuts: &[(usize, u8)]) -> Vec<u8> {
    let mut b = base.as_bytes().to_vec();
    for &(pos, byte) in cuts {
        let i = pos % b.len();
        b[i] = byte;
    }
    b
}

/// xorshift64*: deterministic, so a failure reproduces with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn cuts(&mut self, max: usize) -> Vec<(usize, u8)> {
        let n = (self.next() % max as u64) as usize + 1;
        (0..n)
            .map(|_| (self.next() as usize, self.next() as u8))
            .collect()
    }
}

const CASES: usize = 5000;

#[test]
fn pool_lines_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..CASES {
        let len = (rng.next() % 512) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = parse_pool_line(&String::from_utf8_lossy(&bytes), 16 * 1024);
    }
}

#[test]
fn mutated_notifies_never_panic() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for _ in 0..CASES {
        let b = mutate(NOTIFY, &rng.cuts(6));
        let _ = parse_pool_line(&String::from_utf8_lossy(&b), 16 * 1024);
    }
}

#[test]
fn api_replies_never_panic() {
    let mut rng = Rng(0xfeed_face_cafe_beef);
    for _ in 0..CASES {
        let b = mutate(POOLS, &rng.cuts(6));
        if let Ok(v) = parse_reply(&b, "pools") {
            let _ = parse_pools(&v);
            let _ = parse_summary(&v);
            let _ = parse_devs(&v);
            let _ = parse_session_id(&v);
        }
    }
}

#[test]
fn the_unmutated_samples_decode() {
    // Guards the property tests above: their bases are valid, so mutations explore near them.
    assert!(parse_pool_line(NOTIFY, 16 * 1024).is_ok());
    let v = parse_reply(POOLS.as_bytes(), "pools").unwrap();
    assert_eq!(parse_pools(&v).unwrap()[0].accepted, 5);
    assert_eq!(parse_summary(&v).unwrap().hashrate_5s_hs, Some(1.5e6));
    assert_eq!(parse_devs(&v).unwrap()[0].temperature_c, Some(61.5));
    assert_eq!(parse_session_id(&v).unwrap(), "abc");
}
