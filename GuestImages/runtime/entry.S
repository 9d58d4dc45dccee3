/*
 * PVH entry, long-mode switch, AP trampoline, exception stubs, ring-3 entry.
 * Everything before enter_user runs in ring 0 and is emulated (~1 us per
 * instruction) on the project's machine: keep it short.
 */
#define PTE_P   0x001
#define PTE_RW  0x002
#define PTE_US  0x004
#define PTE_PS  0x080
#define PTE_FLAGS (PTE_P | PTE_RW | PTE_US)

#define SEL_CODE32 0x08
#define SEL_DATA   0x10
#define SEL_CODE64 0x18
#define SEL_UDATA  0x23
#define SEL_UCODE  0x2b

#define MAX_CPUS 64

/* ---------------- Xen PVH note ---------------- */
	.section .note.Xen, "a", @note
	.p2align 2
	.long 2f - 1f           /* namesz */
	.long 4f - 3f           /* descsz */
	.long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
1:	.asciz "Xen"
2:	.p2align 2
3:	.quad pvh_entry32
4:	.p2align 2

/* ---------------- 32-bit entry (BSP) ---------------- */
	.section .text.boot, "ax"
	.code32
	.globl pvh_entry32
pvh_entry32:
	cli
	cld
	movl %ebx, pvh_start_info
	lgdt gdt_ptr
	ljmp $SEL_CODE32, $1f
1:	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs

	/* The page tables come prebuilt (data below): 4 GiB in 2 MiB pages. With
	 * 1 GiB pages the PDPT maps the same 4 GiB in four entries instead. */
	movl $0x80000000, %eax
	cpuid
	cmpl $0x80000001, %eax
	jb 3f
	movl $0x80000001, %eax
	cpuid
	btl $26, %edx
	jnc 3f
	movl $1, rt_use_1g_pages
	movl $(0x00000000 + PTE_FLAGS + PTE_PS), pdpt
	movl $(0x40000000 + PTE_FLAGS + PTE_PS), pdpt + 8
	movl $(0x80000000 + PTE_FLAGS + PTE_PS), pdpt + 16
	movl $(0xc0000000 + PTE_FLAGS + PTE_PS), pdpt + 24
3:	xorl %esi, %esi         /* esi = 0: BSP */

/* Shared by BSP and APs: paging on, long mode, jump to 64-bit code. */
common32:
	movl %cr4, %eax
	orl $0x20, %eax         /* PAE */
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx  /* EFER */
	rdmsr
	orl $0x100, %eax        /* LME */
	wrmsr
	movl %cr0, %eax
	andl $0x9fffffff, %eax  /* clear CD, NW (APs come out of INIT with them set) */
	orl $0x80000001, %eax   /* PG, PE */
	movl %eax, %cr0
	ljmp $SEL_CODE64, $entry64

/* AP: arrives here from the real-mode trampoline, flat 32-bit segments. */
	.globl ap_entry32
ap_entry32:
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movl $1, %esi
	jmp common32

	.code64
entry64:
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	testl %esi, %esi
	jnz 1f
	leaq bsp_kstack_top(%rip), %rsp
	call boot_bsp
	ud2
1:	movq ap_boot_kstack(%rip), %rsp
	call boot_ap
	ud2

/*
 * enter_user(rip, rsp, arg): iretq to ring 3, IOPL=3, IF=0; arg in rdi.
 */
	.globl enter_user
enter_user:
	movl $SEL_UDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movq %rdx, %rax
	pushq $SEL_UDATA
	pushq %rsi
	pushq $0x3002
	pushq $SEL_UCODE
	pushq %rdi
	movq %rax, %rdi
	iretq

/* ---------------- real-mode AP trampoline (copied below 1 MiB) ---------------- */
	.code16
	.globl ap_tramp_start, ap_tramp_end
	.p2align 4
ap_tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl ap_tramp_gdtptr - ap_tramp_start
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $SEL_CODE32, $ap_entry32
	.p2align 3
ap_tramp_gdtptr:
	.word gdt_end - gdt - 1
	.long gdt
ap_tramp_end:

/* ---------------- exception stubs ---------------- */
	.code64
	.macro EXC_NOERR vec
	.p2align 4
	pushq $0
	pushq $\vec
	jmp exc_common
	.endm
	.macro EXC_ERR vec
	.p2align 4
	pushq $\vec
	jmp exc_common
	.endm

	.p2align 4
	.globl exc_stubs
exc_stubs:              /* 32 stubs, 16 bytes apart */
	EXC_NOERR 0
	EXC_NOERR 1
	EXC_NOERR 2
	EXC_NOERR 3
	EXC_NOERR 4
	EXC_NOERR 5
	EXC_NOERR 6
	EXC_NOERR 7
	EXC_ERR 8
	EXC_NOERR 9
	EXC_ERR 10
	EXC_ERR 11
	EXC_ERR 12
	EXC_ERR 13
	EXC_ERR 14
	EXC_NOERR 15
	EXC_NOERR 16
	EXC_ERR 17
	EXC_NOERR 18
	EXC_NOERR 19
	EXC_NOERR 20
	EXC_ERR 21
	EXC_NOERR 22
	EXC_NOERR 23
	EXC_NOERR 24
	EXC_NOERR 25
	EXC_NOERR 26
	EXC_NOERR 27
	EXC_NOERR 28
	EXC_ERR 29
	EXC_ERR 30
	EXC_NOERR 31

exc_common:
	/* frame: vec, err, rip, cs, rflags, rsp, ss */
	movq %rsp, %rdi
	andq $-16, %rsp
	call exception_handler
	ud2

/* ---------------- data ---------------- */
	.data
	.p2align 4
	.globl gdt, gdt_end
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff        /* 0x08 code32 */
	.quad 0x00cf92000000ffff        /* 0x10 data */
	.quad 0x00af9a000000ffff        /* 0x18 code64 */
	.quad 0x00cff2000000ffff        /* 0x20 user data (0x23) */
	.quad 0x00affa000000ffff        /* 0x28 user code64 (0x2b) */
	.globl gdt_tss
gdt_tss:                                /* 0x30 + 16*cpu: TSS descriptors */
	.fill MAX_CPUS * 2, 8, 0
gdt_end:
	.p2align 3
gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt

	.globl pvh_start_info, rt_use_1g_pages
	.p2align 3
pvh_start_info: .quad 0
rt_use_1g_pages: .long 0

/*
 * Identity-mapped page tables for the first 4 GiB, built when the image is
 * assembled: filling 2048 entries at boot took ~10,000 emulated instructions
 * (~7 ms on the project's machine) before the first serial byte.
 */
	.section .data.pagetables, "aw"
	.p2align 12
	.globl pml4, pdpt, pd0
pml4:	.quad pdpt + PTE_FLAGS
	.fill 511, 8, 0
pdpt:	.quad pd0 + 0x0000 + PTE_FLAGS
	.quad pd0 + 0x1000 + PTE_FLAGS
	.quad pd0 + 0x2000 + PTE_FLAGS
	.quad pd0 + 0x3000 + PTE_FLAGS
	.fill 508, 8, 0
pd0:
	.set pd_addr, 0
	.rept 2048
	.quad pd_addr + PTE_FLAGS + PTE_PS
	.set pd_addr, pd_addr + 0x200000
	.endr

	.bss
	.globl bsp_kstack_top, bsp_ustack_top
	.p2align 4
	.skip 16384
bsp_kstack_top:
	.skip 65536
bsp_ustack_top:

	.section .note.GNU-stack, "", @progbits
