import { Body, Controller, Get, HttpCode, Post, Query, Res, UseGuards } from '@nestjs/common';
import type { Response } from 'express';
import { AuthGuard, AuthUser, CurrentUser } from './auth.guard';
import { AuthService } from './auth.service';
import { ForgotPasswordDto, LoginDto, RefreshDto, RegisterDto, ResetPasswordDto, TotpCodeDto, TwoFactorVerifyDto } from './dto';
import { TokensService } from './tokens.service';

@Controller('auth')
export class AuthController {
  constructor(
    private readonly auth: AuthService,
    private readonly tokens: TokensService,
  ) {}

  @Post('register')
  register(@Body() dto: RegisterDto) {
    return this.auth.register(dto);
  }

  @Post('login')
  @HttpCode(200)
  login(@Body() dto: LoginDto) {
    return this.auth.login(dto.email, dto.password);
  }

  @Post('2fa/verify')
  @HttpCode(200)
  verify(@Body() dto: TwoFactorVerifyDto) {
    return this.auth.verifyChallenge(dto.challengeToken, dto.code);
  }

  @Post('refresh')
  @HttpCode(200)
  refresh(@Body() dto: RefreshDto) {
    return this.tokens.rotate(dto.refreshToken);
  }

  @Post('logout')
  @HttpCode(204)
  async logout(@Body() dto: RefreshDto) {
    await this.tokens.revokeFamilyOf(dto.refreshToken);
  }

  @Get('me')
  @UseGuards(AuthGuard)
  me(@CurrentUser() user: AuthUser) {
    return this.auth.me(user.id);
  }

  @Post('2fa/setup')
  @UseGuards(AuthGuard)
  setup(@CurrentUser() user: AuthUser) {
    return this.auth.setupTotp(user.id);
  }

  @Post('2fa/enable')
  @HttpCode(200)
  @UseGuards(AuthGuard)
  enable(@CurrentUser() user: AuthUser, @Body() dto: TotpCodeDto) {
    return this.auth.setTotpEnabled(user.id, dto.code, true);
  }

  @Post('2fa/disable')
  @HttpCode(200)
  @UseGuards(AuthGuard)
  disable(@CurrentUser() user: AuthUser, @Body() dto: TotpCodeDto) {
    return this.auth.setTotpEnabled(user.id, dto.code, false);
  }

  @Get('google')
  async google(@Query('login_hint') loginHint: string | undefined, @Res() res: Response) {
    res.redirect(302, await this.auth.googleRedirect(typeof loginHint === 'string' ? loginHint : undefined));
  }

  @Get('google/callback')
  googleCallback(@Query() q: Record<string, unknown>) {
    const s = (v: unknown) => (typeof v === 'string' ? v : undefined);
    return this.auth.googleCallback({ code: s(q.code), state: s(q.state), error: s(q.error) });
  }

  @Post('password/forgot')
  @HttpCode(202)
  async forgot(@Body() dto: ForgotPasswordDto) {
    await this.auth.forgotPassword(dto.email);
    return { message: 'If the address is registered, a reset link has been sent' };
  }

  @Post('password/reset')
  @HttpCode(200)
  async reset(@Body() dto: ResetPasswordDto) {
    await this.auth.resetPassword(dto.token, dto.password);
    return { message: 'Password has been reset' };
  }
}

@Controller('.well-known')
export class JwksController {
  constructor(private readonly tokens: TokensService) {}

  @Get('jwks.json')
  jwks() {
    return this.tokens.jwks();
  }
}
