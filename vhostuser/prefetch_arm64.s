#include "textflag.h"

// func prefetchRead(addr uintptr)
TEXT ·prefetchRead(SB), NOSPLIT, $0-8
	MOVD	addr+0(FP), R0
	PRFM	(R0), PLDL1KEEP
	RET

// func prefetchForWrite(addr uintptr)
TEXT ·prefetchForWrite(SB), NOSPLIT, $0-8
	MOVD	addr+0(FP), R0
	PRFM	(R0), PSTL1KEEP
	RET
