//! SCSI commands and data patterns for every integration test: CDB builders and
//! reproducible data, with no dependency on how the command is carried. Tests that drive
//! the daemon get them through `common`; tests that talk to an iSCSI target directly
//! include this module themselves.
#![allow(dead_code)]

use vscsid::frontend::rng::Rng;

/// TEST UNIT READY.
pub fn test_unit_ready() -> [u8; 6] {
    [0u8; 6]
}

/// INQUIRY (standard data) with allocation length `alloc`.
pub fn inquiry(alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, 0, 0, a[0], a[1], 0]
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16), service action 0x10).
pub fn read_capacity16(alloc: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = alloc;
    c
}

/// REPORT LUNS with allocation length `alloc`.
pub fn report_luns(alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xa0;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// READ(16) of `blocks` blocks at `lba`.
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE(16) of `blocks` blocks at `lba`.
pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = read16(lba, blocks);
    c[0] = 0x8a;
    c
}

/// VERIFY(16) with BYTCHK=1: the data-out is compared with `blocks` blocks at `lba`.
pub fn verify16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = read16(lba, blocks);
    c[0] = 0x8f;
    c[1] = 0x02;
    c
}

/// WRITE SAME(16) of one data-out block over `blocks` blocks at `lba` (no flags).
pub fn write_same16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = read16(lba, blocks);
    c[0] = 0x93;
    c
}

/// COMPARE AND WRITE of `blocks` blocks at `lba`: the data-out is the data to compare,
/// then the data to write.
pub fn compare_and_write(lba: u64, blocks: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

/// SYNCHRONIZE CACHE(10) of the whole medium.
pub fn synchronize_cache10() -> [u8; 10] {
    [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// UNMAP of one range: the CDB and its parameter list (one block descriptor).
pub fn unmap(lba: u64, blocks: u32) -> ([u8; 10], Vec<u8>) {
    let mut list = vec![0u8; 24];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[8..16].copy_from_slice(&lba.to_be_bytes());
    list[16..20].copy_from_slice(&blocks.to_be_bytes());
    ([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], list)
}

/// PERSISTENT RESERVE OUT: service action, reservation type (scope LU), and the 24-byte
/// basic parameter list with the reservation key and service action reservation key.
pub fn persistent_reserve_out(action: u8, kind: u8, key: u64, sa_key: u64) -> ([u8; 10], Vec<u8>) {
    let mut list = vec![0u8; 24];
    list[0..8].copy_from_slice(&key.to_be_bytes());
    list[8..16].copy_from_slice(&sa_key.to_be_bytes());
    ([0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0], list)
}

/// PERSISTENT RESERVE IN with service action `action` (0: READ KEYS).
pub fn persistent_reserve_in(action: u8, alloc: u16) -> [u8; 10] {
    let [hi, lo] = alloc.to_be_bytes();
    [0x5e, action, 0, 0, 0, 0, 0, hi, lo, 0]
}

/// The keys of READ KEYS parameter data.
pub fn registered_keys(data: &[u8]) -> Vec<u64> {
    let len = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
    data[8..8 + len.min(data.len() - 8)]
        .chunks_exact(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

/// `len` bytes of reproducible data, different for every seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).fill(&mut data);
    data
}
