// Test-only stand-in for the handful of Foundation declarations that
// metal/metal_host.mm uses, written from Apple's documentation so that clang
// can syntax- and type-check the host code (ARC included) on Linux
// (tests/test_metal_shim.py::test_host_code_against_mock_sdk). It is not
// Apple's header: it only declares what the host code calls, with the
// documented signatures, so a misspelt selector or a wrong argument type
// fails the check. A real build on a Mac is still the authority.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define __MAC_15_0 150000
#ifndef __MAC_OS_X_VERSION_MAX_ALLOWED
#define __MAC_OS_X_VERSION_MAX_ALLOWED __MAC_15_0
#endif

typedef unsigned long NSUInteger;
typedef long NSInteger;
typedef signed char BOOL;
#define nil nullptr
#define YES ((BOOL)1)
#define NO ((BOOL)0)

__attribute__((objc_root_class))
@interface NSObject
+ (instancetype)alloc;
- (instancetype)init;
@end

@interface NSString : NSObject
+ (instancetype)stringWithUTF8String:(const char*)nullTerminatedCString;
@property(readonly) const char* UTF8String;
@end

@interface NSError : NSObject
@property(readonly, copy) NSString* localizedDescription;
@end

@interface NSURL : NSObject
+ (NSURL*)fileURLWithPath:(NSString*)path;
@end

@interface NSArray<__covariant ObjectType> : NSObject
@property(readonly) NSUInteger count;
- (ObjectType)objectAtIndexedSubscript:(NSUInteger)idx;
@end
