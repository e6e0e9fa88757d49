// IEEE binary16 on the host: conversion both ways and packing two halves per u32 word, the form
// in which f16 data reaches every kernel (WebGPU compatibility mode has no f16 buffers). The one
// implementation is codegen/dsl/f16.ts (shared with the emitters and the CPU executor).
export { f16BitsToF32, f32ArrayToF16, f32ToF16Bits, packF16Pairs, roundToF16, unpackF16Pairs } from '../../codegen/dsl/f16.js';
