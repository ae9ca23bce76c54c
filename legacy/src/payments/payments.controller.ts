import {
  BadRequestException,
  Body,
  Controller,
  Get,
  Headers,
  HttpCode,
  Inject,
  Logger,
  Post,
  Req,
  UseGuards,
} from '@nestjs/common';
import type { RawBodyRequest } from '@nestjs/common';
import type { Request } from 'express';
import { AuthGuard, AuthUser, CurrentUser } from '../auth/auth.guard';
import { Config, CONFIG } from '../config';
import { CheckoutDto } from './dto';
import { PaymentsService } from './payments.service';
import { verifyStripeSignature } from './webhook-signature';
import { StripeEvent, WebhookService } from './webhook.service';

@Controller('payments')
export class PaymentsController {
  private readonly log = new Logger('StripeWebhook');

  constructor(
    @Inject(CONFIG) private readonly config: Config,
    private readonly payments: PaymentsService,
    private readonly webhooks: WebhookService,
  ) {}

  @Get('plans')
  plans() {
    return this.payments.plans();
  }

  @Post('checkout')
  @UseGuards(AuthGuard)
  checkout(@CurrentUser() user: AuthUser, @Body() dto: CheckoutDto) {
    return this.payments.checkout(user, dto.planId);
  }

  @Get('subscription')
  @UseGuards(AuthGuard)
  subscription(@CurrentUser() user: AuthUser) {
    return this.payments.subscription(user.id);
  }

  @Post('subscription/cancel')
  @HttpCode(200)
  @UseGuards(AuthGuard)
  cancel(@CurrentUser() user: AuthUser) {
    return this.payments.cancel(user.id);
  }

  /** Stripe's webhook endpoint: no bearer auth, the signature over the raw body authenticates it. */
  @Post('webhook')
  @HttpCode(200)
  async webhook(@Req() req: RawBodyRequest<Request>, @Headers('stripe-signature') signature: string | undefined) {
    // rawBody is set by Nest's JSON parser (app created with rawBody: true); other content types have none.
    const raw = req.rawBody;
    if (!raw || raw.length === 0) throw new BadRequestException('Missing request body');
    const check = verifyStripeSignature(raw, signature, this.config.stripe.webhookSecret);
    if (!check.ok) {
      this.log.warn(`rejected webhook: ${check.reason}`);
      throw new BadRequestException('Invalid Stripe signature');
    }
    // Parse the verified bytes ourselves rather than trusting a re-serialised body.
    let event: StripeEvent;
    try {
      event = JSON.parse(raw.toString('utf8'));
    } catch {
      throw new BadRequestException('Malformed event');
    }
    if (!event || typeof event !== 'object' || typeof event.id !== 'string' || !event.id || typeof event.type !== 'string') {
      throw new BadRequestException('Malformed event');
    }
    const fresh = await this.webhooks.process(event);
    if (!fresh) this.log.log(`event ${event.id} (${event.type}) already processed`);
    return { received: true };
  }
}
