#include "textflag.h"

// func prefetchRead(addr uintptr)
TEXT ·prefetchRead(SB), NOSPLIT, $0-8
	MOVQ	addr+0(FP), AX
	PREFETCHT0	(AX)
	RET

// func prefetchWrite(addr uintptr)
TEXT ·prefetchWrite(SB), NOSPLIT, $0-8
	MOVQ	addr+0(FP), AX
	// PREFETCHW (AX): 0F 0D /1. The Go assembler has no mnemonic for it.
	BYTE	$0x0f; BYTE $0x0d; BYTE $0x08
	RET

// func cpuHasPrefetchW() bool
TEXT ·cpuHasPrefetchW(SB), NOSPLIT, $0-1
	MOVL	$0x80000000, AX
	CPUID
	CMPL	AX, $0x80000001
	JB	none
	MOVL	$0x80000001, AX
	CPUID
	SHRL	$8, CX // ECX bit 8: PREFETCHW (3DNowPrefetch)
	ANDL	$1, CX
	MOVB	CX, ret+0(FP)
	RET
none:
	MOVB	$0, ret+0(FP)
	RET
