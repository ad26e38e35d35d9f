//! x86_64 boot specifics: the guest-physical memory layout and the pieces the
//! VMM writes before the first instruction (GDT, page tables, zero page with
//! e820 map, MP table, command line).

pub mod bootparams;
pub mod cmdline;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;

pub use bootparams::{build_boot_params, e820_map, E820Entry};
pub use cmdline::{build_cmdline, BASE_CMDLINE};
pub use gdt::{gdt_entry, kvm_segment_from_gdt, BOOT_GDT};
pub use layout::*;
pub use mptable::build_mptable;
pub use paging::identity_page_tables;
