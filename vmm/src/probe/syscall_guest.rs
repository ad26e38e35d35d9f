//! The pre-probe's guest: a hand-assembled 64-bit program that proves, in a
//! few milliseconds and without a kernel image, the two things a real guest
//! needs and the project's nested PVM hosts cannot do: enter ring 3 and make
//! a system call back into ring 0.
//!
//! Source (GNU as, Intel syntax; `as --64` then `objcopy -O binary`), loaded
//! and entered at [`LOAD_ADDR`] in long mode by the VMM's flat-guest path:
//!
//! ```text
//! start:  or qword ptr [0x9000], 4      ; U/S bit on the VMM's identity map
//!         or qword ptr [0xa000], 4      ;   (PML4[0], PDPT[0], PD[0]: 0..2 MiB)
//!         or qword ptr [0xb000], 4
//!         mov rax, cr3 ; mov cr3, rax   ; flush the TLB
//!         lea rax, [rip + gdt]          ; our GDT: null, kernel code 0x08,
//!         mov [rip + gdtr + 2], rax     ;   kernel data 0x10, user data 0x18,
//!         lgdt [rip + gdtr]             ;   user code 0x20
//!         mov ecx, 0xc0000080 ; rdmsr ; or eax, 1 ; wrmsr     ; EFER.SCE
//!         mov ecx, 0xc0000081 ; xor eax, eax ; mov edx, 0x00100008 ; wrmsr ; STAR
//!         mov ecx, 0xc0000082 ; lea rax, [rip + handler]
//!         mov rdx, rax ; shr rdx, 32 ; wrmsr                  ; LSTAR
//!         mov ecx, 0xc0000084 ; xor eax, eax ; xor edx, edx ; wrmsr ; FMASK
//!         mov dx, 0x0f00 ; mov al, 1 ; out dx, al             ; mark 1: ring 0 ran
//!         push 0x1b ; push 0x1ff000 ; push 0x2 ; push 0x23    ; SS, RSP, RFLAGS, CS
//!         lea rax, [rip + user] ; push rax ; iretq            ; -> ring 3
//! user:   mov eax, 0x5a5a ; syscall ; ud2
//! handler: mov bx, cs ; mov esi, eax
//!         mov dx, 0x3f8 ; mov al, 'C'                         ; COM1 verdict byte
//!         cmp bx, 0x08 ; jne report                           ; C: not our kernel CS
//!         mov al, 'A' ; cmp esi, 0x5a5a ; jne report          ; A: rax lost
//!         mov dx, 0x0f00 ; mov al, 2 ; out dx, al             ; mark 2: syscall ok
//!         mov dx, 0x3f8 ; mov al, 'S'                         ; S: success
//! report: out dx, al
//! reset:  mov al, 0xfe ; out 0x64, al ; hlt                   ; power off
//!         .balign 8
//! gdt:    .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff,
//!               0x00cff2000000ffff, 0x00affa000000ffff
//! gdtr:   .word 39 ; .quad 0
//! ```
//!
//! Without an IDT any fault on the way (ring 3 entry refused, `syscall`
//! not delivered) ends in a triple fault, an internal error, or a timeout:
//! each a "no" with its reason. Mark 2 followed by the reset is the "yes".

/// Where the VMM loads and enters the code (inside the first 2 MiB, which
/// the code makes user-accessible).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// What the system call handler wrote to COM1.
pub fn verdict_byte_meaning(byte: Option<u8>) -> &'static str {
    match byte {
        Some(b'S') => "the system call arrived in ring 0",
        Some(b'C') => "the system call arrived, but not in the kernel code segment STAR names",
        Some(b'A') => "the system call arrived with its rax changed",
        Some(_) => "the handler wrote an unknown verdict",
        None => "the system call handler never ran",
    }
}

/// The assembled bytes of the program above.
pub const CODE: [u8; 250] = [
    0x48, 0x83, 0x0c, 0x25, 0x00, 0x90, 0x00, 0x00, 0x04, 0x48, 0x83, 0x0c, 0x25, 0x00, 0xa0, 0x00,
    0x00, 0x04, 0x48, 0x83, 0x0c, 0x25, 0x00, 0xb0, 0x00, 0x00, 0x04, 0x0f, 0x20, 0xd8, 0x0f, 0x22,
    0xd8, 0x48, 0x8d, 0x05, 0xa0, 0x00, 0x00, 0x00, 0x48, 0x89, 0x05, 0xc3, 0x00, 0x00, 0x00, 0x0f,
    0x01, 0x15, 0xba, 0x00, 0x00, 0x00, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x83, 0xc8, 0x01,
    0x0f, 0x30, 0xb9, 0x81, 0x00, 0x00, 0xc0, 0x31, 0xc0, 0xba, 0x08, 0x00, 0x10, 0x00, 0x0f, 0x30,
    0xb9, 0x82, 0x00, 0x00, 0xc0, 0x48, 0x8d, 0x05, 0x39, 0x00, 0x00, 0x00, 0x48, 0x89, 0xc2, 0x48,
    0xc1, 0xea, 0x20, 0x0f, 0x30, 0xb9, 0x84, 0x00, 0x00, 0xc0, 0x31, 0xc0, 0x31, 0xd2, 0x0f, 0x30,
    0x66, 0xba, 0x00, 0x0f, 0xb0, 0x01, 0xee, 0x6a, 0x1b, 0x68, 0x00, 0xf0, 0x1f, 0x00, 0x6a, 0x02,
    0x6a, 0x23, 0x48, 0x8d, 0x05, 0x03, 0x00, 0x00, 0x00, 0x50, 0x48, 0xcf, 0xb8, 0x5a, 0x5a, 0x00,
    0x00, 0x0f, 0x05, 0x0f, 0x0b, 0x66, 0x8c, 0xcb, 0x89, 0xc6, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x43,
    0x66, 0x83, 0xfb, 0x08, 0x75, 0x17, 0xb0, 0x41, 0x81, 0xfe, 0x5a, 0x5a, 0x00, 0x00, 0x75, 0x0d,
    0x66, 0xba, 0x00, 0x0f, 0xb0, 0x02, 0xee, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x53, 0xee, 0xb0, 0xfe,
    0xe6, 0x64, 0xf4, 0x0f, 0x1f, 0x44, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0xf2, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0xfa, 0xaf, 0x00,
    0x27, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets in the listing.
    const GDT_OFFSET: usize = 0xc8;
    const GDTR_OFFSET: usize = 0xf0;

    fn quad(at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&CODE[at..at + 8]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn gdt_holds_kernel_and_user_segments_at_the_selectors_the_code_uses() {
        assert_eq!(GDT_OFFSET % 8, 0, "aligned GDT");
        let gdt: Vec<u64> = (0..5).map(|i| quad(GDT_OFFSET + 8 * i)).collect();
        let access = |d: u64| (d >> 40) & 0xff;
        let long = |d: u64| (d >> 53) & 1;
        assert_eq!(gdt[0], 0);
        // 0x08 kernel code: present, DPL 0, code, L=1 (syscall's CS = STAR[47:32]).
        assert_eq!((access(gdt[1]), long(gdt[1])), (0x9a, 1));
        assert_eq!(access(gdt[2]), 0x92);
        // 0x18 user data and 0x20 user code, DPL 3 (the iretq frame's 0x1b, 0x23).
        assert_eq!(access(gdt[3]), 0xf2);
        assert_eq!((access(gdt[4]), long(gdt[4])), (0xfa, 1));
        assert_eq!(&CODE[GDTR_OFFSET..GDTR_OFFSET + 2], &39u16.to_le_bytes());
        assert_eq!(CODE.len(), GDTR_OFFSET + 10);
    }

    #[test]
    fn rip_relative_references_point_at_the_gdt_and_gdtr() {
        // lea rax, [rip + disp] at 0x21 (7 bytes) -> gdt
        let disp =
            |at: usize| i32::from_le_bytes([CODE[at], CODE[at + 1], CODE[at + 2], CODE[at + 3]]);
        assert_eq!(0x28 + disp(0x24) as usize, GDT_OFFSET);
        // mov [rip + disp], rax at 0x28 -> gdtr + 2
        assert_eq!(0x2f + disp(0x2b) as usize, GDTR_OFFSET + 2);
        // lgdt [rip + disp] at 0x2f -> gdtr
        assert_eq!(0x36 + disp(0x32) as usize, GDTR_OFFSET);
        // lea rax, [rip + disp] at 0x55 -> handler (0x95), at 0x82 -> user (0x8c)
        assert_eq!(0x5c + disp(0x58) as usize, 0x95);
        assert_eq!(0x89 + disp(0x85) as usize, 0x8c);
        // syscall instruction (0f 05) at 0x91, entered from ring 3.
        assert_eq!(&CODE[0x91..0x93], &[0x0f, 0x05]);
        // STAR: kernel CS 0x08 in bits 47:32 (edx low word).
        assert_eq!(&CODE[0x49..0x4e], &[0xba, 0x08, 0x00, 0x10, 0x00]);
    }
}
