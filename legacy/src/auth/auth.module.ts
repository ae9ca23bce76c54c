import { Global, Module } from '@nestjs/common';
import { JwtModule } from '@nestjs/jwt';
import { Config, CONFIG } from '../config';
import { AuthController, JwksController } from './auth.controller';
import { AuthGuard } from './auth.guard';
import { AuthService } from './auth.service';
import { GmailService } from './gmail.service';
import { TokensService } from './tokens.service';

/** Global: every feature module guards its routes with AuthGuard. */
@Global()
@Module({
  imports: [
    JwtModule.registerAsync({
      inject: [CONFIG],
      useFactory: (c: Config) => ({
        privateKey: c.jwt.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
        publicKey: c.jwt.publicKey.export({ format: 'pem', type: 'spki' }) as string,
        signOptions: { algorithm: 'RS256', keyid: c.jwt.keyId, issuer: c.jwt.issuer, audience: c.jwt.audience, expiresIn: c.jwt.accessTtlSecs },
        verifyOptions: { algorithms: ['RS256'], issuer: c.jwt.issuer, audience: c.jwt.audience },
      }),
    }),
  ],
  controllers: [AuthController, JwksController],
  providers: [AuthService, TokensService, AuthGuard, GmailService],
  exports: [TokensService, AuthGuard, GmailService],
})
export class AuthModule {}
