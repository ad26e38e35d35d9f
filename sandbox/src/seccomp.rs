//! The sandbox's seccomp filters: what a process inside may never ask the
//! kernel for, even though it already runs unprivileged. Built in the
//! parent (it allocates), installed in the child just before `execve`.
//!
//! Default: allow. Refused with `EPERM`: anything that makes namespaces or
//! mounts (an unprivileged user namespace would hand the agent a fresh set
//! of capabilities over a new view), loads kernel code, or reaches kernel
//! surfaces a coding agent has no use for. `clone3` and `io_uring_setup`
//! get `ENOSYS` so libc falls back to `clone`, whose flags are checkable.
//!
//! Sockets: `socket()` and `socketpair()` only for `AF_UNIX`, `AF_INET` and
//! `AF_INET6`, plus `AF_NETLINK` with `NETLINK_ROUTE` on `socket()` alone
//! (glibc's `getaddrinfo`, `getifaddrs` and `if_nameindex` read the
//! namespace's own addresses through it; see `docs/sandbox.md`). Every
//! other family (`AF_VSOCK`, which no network namespace confines,
//! `AF_PACKET`, `AF_BLUETOOTH`, `AF_ALG`, ...) gets `EAFNOSUPPORT`, every
//! other netlink protocol `EPROTONOSUPPORT`: the answers a kernel built
//! without them gives, which programs already handle.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

/// Syscalls refused outright with `EPERM`.
const DENIED: &[i64] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
];

/// `clone` flags that create namespaces.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// Address families `socket()` and `socketpair()` may create.
const SOCKET_FAMILIES: &[i32] = &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6];

/// Netlink protocols `socket(AF_NETLINK, ...)` may name: only the
/// namespaced, read-only-without-`CAP_NET_ADMIN` routing protocol.
const NETLINK_PROTOCOLS: &[i32] = &[libc::NETLINK_ROUTE];

/// The BPF programs, in install order.
pub(crate) struct SandboxFilters {
    pub programs: Vec<BpfProgram>,
}

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

pub(crate) fn build() -> Result<SandboxFilters, SandboxError> {
    let err = |e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string());
    let arch = arch()?;

    let mut deny: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let mut clone_rules = Vec::new();
    for &flag in NS_FLAGS {
        // clone(flags, ...): arg 0 holds the flags on x86_64 and aarch64.
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(err)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(err)?);
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;

    let nosys: BTreeMap<i64, Vec<SeccompRule>> = [libc::SYS_clone3, libc::SYS_io_uring_setup]
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let nosys = SeccompFilter::new(
        nosys,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;

    let mut programs = [
        deny,
        nosys,
        socket_families(arch)?,
        netlink_protocols(arch)?,
    ]
    .into_iter()
    .map(|f| BpfProgram::try_from(f).map_err(|e| SandboxError::Seccomp(e.to_string())))
    .collect::<Result<Vec<_>, _>>()?;
    if cfg!(target_arch = "x86_64") {
        programs.insert(0, x86_64_abi_guard());
    }
    Ok(SandboxFilters { programs })
}

/// `socket(family, ...)` and `socketpair(family, ...)` for a family not in
/// [`SOCKET_FAMILIES`] (`AF_NETLINK` passes `socket()` here; the next
/// filter checks its protocol): `EAFNOSUPPORT`.
fn socket_families(arch: TargetArch) -> Result<SeccompFilter, SandboxError> {
    let err = |e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string());
    // One rule whose conditions all hold (they are ANDed) when the family
    // is none of the allowed ones. The family is an `int`: compare 32 bits.
    let not_one_of = |families: &[i32]| -> Result<SeccompRule, SandboxError> {
        let conds = families
            .iter()
            .map(|&f| {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, f as u64)
                    .map_err(err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        SeccompRule::new(conds).map_err(err)
    };
    let mut with_netlink = SOCKET_FAMILIES.to_vec();
    with_netlink.push(libc::AF_NETLINK);
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [
        (libc::SYS_socket, vec![not_one_of(&with_netlink)?]),
        (libc::SYS_socketpair, vec![not_one_of(SOCKET_FAMILIES)?]),
    ]
    .into_iter()
    .collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch,
    )
    .map_err(err)
}

/// `socket(AF_NETLINK, type, protocol)` for a protocol not in
/// [`NETLINK_PROTOCOLS`]: `EPROTONOSUPPORT`.
fn netlink_protocols(arch: TargetArch) -> Result<SeccompFilter, SandboxError> {
    let err = |e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string());
    let mut conds = vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_NETLINK as u64,
    )
    .map_err(err)?];
    for &p in NETLINK_PROTOCOLS {
        conds.push(
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p as u64)
                .map_err(err)?,
        );
    }
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [(
        libc::SYS_socket,
        vec![SeccompRule::new(conds).map_err(err)?],
    )]
    .into_iter()
    .collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPROTONOSUPPORT as u32),
        arch,
    )
    .map_err(err)
}

/// On x86_64 the filters above match native syscall numbers only. The x32
/// ABI reaches the same syscalls as `nr | 0x4000_0000` (on kernels built
/// with it), and the i386 ABI (`int 0x80`) under another audit arch; this
/// hand-written program answers both with `ENOSYS` so neither can route
/// around the rules.
fn x86_64_abi_guard() -> BpfProgram {
    // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20).
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const RET_ERRNO_ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let ins = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.arch is at offset 4, .nr at offset 0.
        ins(BPF_LD_W_ABS, 0, 0, 4),
        ins(BPF_JMP_JEQ_K, 0, 2, AUDIT_ARCH_X86_64),
        ins(BPF_LD_W_ABS, 0, 0, 0),
        ins(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(BPF_RET_K, 0, 0, RET_ERRNO_ENOSYS),
        ins(BPF_RET_K, 0, 0, RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let f = build().expect("filters build");
        assert_eq!(
            f.programs.len(),
            if cfg!(target_arch = "x86_64") { 5 } else { 4 }
        );
        assert!(f.programs.iter().all(|p| !p.is_empty()));
    }
}
